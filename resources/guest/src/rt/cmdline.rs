//! Kernel command-line parsing: whitespace-separated `key=value` (or bare `key`) tokens.
//! Quoting is not supported.

/// The kernel command line.
#[derive(Clone, Copy)]
pub struct Cmdline {
    raw: &'static str,
}

impl Cmdline {
    pub fn new(raw: &'static str) -> Self {
        Cmdline { raw }
    }

    /// The whole command line, as the VMM passed it.
    pub fn as_str(&self) -> &'static str {
        self.raw
    }

    /// Every token as `(key, Some(value))` for `key=value` or `(key, None)` for a bare `key`.
    pub fn params(&self) -> impl Iterator<Item = (&'static str, Option<&'static str>)> {
        self.raw
            .split_ascii_whitespace()
            .map(|token| match token.split_once('=') {
                Some((key, value)) => (key, Some(value)),
                None => (token, None),
            })
    }

    /// The value of the last `key=value` token for `key`.
    pub fn get(&self, key: &str) -> Option<&'static str> {
        self.params()
            .filter(|&(k, _)| k == key)
            .filter_map(|(_, value)| value)
            .last()
    }
}
