//! The `key=value,key=value` form of device flags (`--disk path=FILE,readonly=on`).

use std::collections::BTreeMap;

use super::ConfigError;

/// The options of one device flag, taken out one by one; what is left at the end is an
/// unknown option.
#[derive(Debug)]
pub struct Options {
    flag: &'static str,
    values: BTreeMap<String, String>,
}

impl Options {
    /// Splits `text` (the value of `--<flag>`) into options. `rate=` is a prefix for the
    /// rate-limit keys, so `rate=bw=50M,ops=1000` reads as `bw=50M` and `ops=1000`. A key
    /// given twice, an option without `=` or an empty key is an error.
    pub fn parse(flag: &'static str, text: &str) -> Result<Self, ConfigError> {
        Self::parse_with_lists(flag, text, &[])
    }

    /// [`Options::parse`] where the values of `list_keys` are comma-separated lists: a part
    /// without `=` right after such a key continues its value, so `cpus=0,2,4-5,memory=1G`
    /// reads as `cpus=0,2,4-5` and `memory=1G`.
    pub fn parse_with_lists(
        flag: &'static str,
        text: &str,
        list_keys: &[&str],
    ) -> Result<Self, ConfigError> {
        let mut values: BTreeMap<String, String> = BTreeMap::new();
        let mut list: Option<String> = None;
        for part in text.split(',') {
            if let Some(key) = list.as_ref().filter(|_| !part.contains('=')) {
                if let Some(value) = values.get_mut(key) {
                    value.push(',');
                    value.push_str(part);
                    continue;
                }
            }
            let part = part.strip_prefix("rate=").unwrap_or(part);
            let (key, value) = part
                .split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| ConfigError::Option {
                    flag,
                    reason: format!("{part:?} is not key=value"),
                })?;
            if values.insert(key.to_string(), value.to_string()).is_some() {
                return Err(ConfigError::Option {
                    flag,
                    reason: format!("{key} is given twice"),
                });
            }
            list = list_keys.contains(&key).then(|| key.to_string());
        }
        Ok(Options { flag, values })
    }

    /// Takes the value of `key`.
    pub fn take(&mut self, key: &str) -> Option<String> {
        self.values.remove(key)
    }

    /// Takes the value of `key`, which must be there.
    pub fn require(&mut self, key: &str) -> Result<String, ConfigError> {
        self.take(key).ok_or_else(|| ConfigError::Option {
            flag: self.flag,
            reason: format!("{key}= is required"),
        })
    }

    /// Takes an `on`/`off` (or `true`/`false`) value; absent is `false`.
    pub fn take_bool(&mut self, key: &str) -> Result<bool, ConfigError> {
        match self.take(key).as_deref() {
            None | Some("off" | "false") => Ok(false),
            Some("on" | "true") => Ok(true),
            Some(other) => Err(self.invalid(key, other, "expected on or off")),
        }
    }

    /// Takes a value and parses it with `parse`.
    pub fn take_parsed<T, E: std::fmt::Display>(
        &mut self,
        key: &str,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Result<Option<T>, ConfigError> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => parse(&v)
                .map(Some)
                .map_err(|e| self.invalid(key, &v, &e.to_string())),
        }
    }

    /// Takes every key in `keys` that is present, as `key=value` joined with commas, in the
    /// order of `keys` (for sub-options such as the rate limit).
    pub fn take_group(&mut self, keys: &[&str]) -> Option<String> {
        let parts: Vec<String> = keys
            .iter()
            .filter_map(|k| self.take(k).map(|v| format!("{k}={v}")))
            .collect();
        (!parts.is_empty()).then(|| parts.join(","))
    }

    /// An error for a bad value.
    pub fn invalid(&self, key: &str, value: &str, reason: &str) -> ConfigError {
        ConfigError::Option {
            flag: self.flag,
            reason: format!("invalid {key}={value}: {reason}"),
        }
    }

    /// Fails if any option was not taken.
    pub fn finish(self) -> Result<(), ConfigError> {
        match self.values.keys().next() {
            None => Ok(()),
            Some(key) => Err(ConfigError::Option {
                flag: self.flag,
                reason: format!("unknown option {key}"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_taken_and_rate_is_a_prefix() {
        let mut o = Options::parse("disk", "path=/a,readonly=on,rate=bw=5M,ops=10").unwrap();
        assert_eq!(o.require("path").unwrap(), "/a");
        assert!(o.take_bool("readonly").unwrap());
        assert_eq!(
            o.take_group(&["bw", "ops", "bw_burst"]).unwrap(),
            "bw=5M,ops=10"
        );
        o.finish().unwrap();
    }

    #[test]
    fn list_keys_take_the_parts_without_a_key_that_follow() {
        let mut o =
            Options::parse_with_lists("numa", "node=0,cpus=0,2,4-5,memory=1G", &["cpus"]).unwrap();
        assert_eq!(o.take("cpus").unwrap(), "0,2,4-5");
        assert_eq!(o.take("memory").unwrap(), "1G");
        assert_eq!(o.take("node").unwrap(), "0");
        o.finish().unwrap();
        // Only after a list key: elsewhere a part without `=` is still an error.
        assert!(Options::parse_with_lists("numa", "node=0,1,cpus=0", &["cpus"]).is_err());
        assert!(Options::parse_with_lists("numa", "1,cpus=0", &["cpus"]).is_err());
        assert!(Options::parse("numa", "cpus=0,1").is_err());
    }

    #[test]
    fn malformed_duplicate_and_unknown_options_are_errors() {
        assert!(Options::parse("disk", "path").is_err());
        assert!(Options::parse("disk", "=x").is_err());
        assert!(Options::parse("disk", "path=a,path=b").is_err());
        let mut o = Options::parse("disk", "path=a,colour=blue").unwrap();
        o.take("path");
        let e = o.finish().unwrap_err().to_string();
        assert!(e.contains("unknown option colour"), "{e}");
        let mut o = Options::parse("disk", "readonly=maybe").unwrap();
        assert!(o.take_bool("readonly").is_err());
        let mut o = Options::parse("disk", "x=1").unwrap();
        assert!(o
            .require("path")
            .unwrap_err()
            .to_string()
            .contains("path= is required"));
    }
}
