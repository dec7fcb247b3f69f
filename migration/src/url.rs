//! `unix:PATH` and `tcp:HOST:PORT` migration addresses.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Where a migration connects or listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrationUrl {
    /// A Unix stream socket at this path.
    Unix(PathBuf),
    /// A TCP address: an IPv4 address, an IPv6 address (stored without brackets) or a name.
    Tcp(String, u16),
}

/// Why a migration URL did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("{0:?} has no scheme; expected \"unix:PATH\" or \"tcp:HOST:PORT\"")]
    MissingScheme(String),
    #[error("unknown scheme {0:?}; expected \"unix\" or \"tcp\"")]
    UnknownScheme(String),
    #[error("\"unix:\" needs a socket path")]
    EmptyPath,
    #[error("{0:?} has no port; expected \"tcp:HOST:PORT\"")]
    MissingPort(String),
    #[error("port {0:?} is not a number from 1 to 65535 (0 only to listen on any port)")]
    BadPort(String),
    #[error("\"tcp:\" needs a host before the port")]
    EmptyHost,
    #[error("{0:?}: an IPv6 address must be written in brackets, like [::1]:4444")]
    UnbracketedIpv6(String),
    #[error("{0:?}: unclosed or misplaced '[' ']' around an IPv6 address")]
    BadBrackets(String),
    #[error("host {0:?} contains a character not allowed in a host name")]
    BadHost(String),
}

impl FromStr for MigrationUrl {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Self, UrlError> {
        let (scheme, rest) = s
            .split_once(':')
            .ok_or_else(|| UrlError::MissingScheme(s.to_string()))?;
        match scheme {
            "unix" => {
                if rest.is_empty() {
                    return Err(UrlError::EmptyPath);
                }
                Ok(MigrationUrl::Unix(PathBuf::from(rest)))
            }
            "tcp" => parse_tcp(rest),
            other => Err(UrlError::UnknownScheme(other.to_string())),
        }
    }
}

fn parse_tcp(rest: &str) -> Result<MigrationUrl, UrlError> {
    let (host, port) = if let Some(after) = rest.strip_prefix('[') {
        let (host, tail) = after
            .split_once(']')
            .ok_or_else(|| UrlError::BadBrackets(rest.to_string()))?;
        let port = tail
            .strip_prefix(':')
            .ok_or_else(|| UrlError::MissingPort(rest.to_string()))?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(UrlError::BadBrackets(rest.to_string()));
        }
        (host, port)
    } else {
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| UrlError::MissingPort(rest.to_string()))?;
        if host.contains(':') {
            return Err(UrlError::UnbracketedIpv6(rest.to_string()));
        }
        if host.contains('[') || host.contains(']') {
            return Err(UrlError::BadBrackets(rest.to_string()));
        }
        if host.is_empty() {
            return Err(UrlError::EmptyHost);
        }
        if !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_')
        {
            return Err(UrlError::BadHost(host.to_string()));
        }
        (host, port)
    };
    if port.is_empty() {
        return Err(UrlError::MissingPort(rest.to_string()));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| UrlError::BadPort(port.to_string()))?;
    Ok(MigrationUrl::Tcp(host.to_string(), port))
}

impl fmt::Display for MigrationUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MigrationUrl::Unix(path) => write!(f, "unix:{}", path.display()),
            MigrationUrl::Tcp(host, port) if host.contains(':') => {
                write!(f, "tcp:[{host}]:{port}")
            }
            MigrationUrl::Tcp(host, port) => write!(f, "tcp:{host}:{port}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<MigrationUrl, UrlError> {
        s.parse()
    }

    #[test]
    fn good_forms_parse_and_round_trip_through_display() {
        let cases = [
            (
                "unix:/run/petrel/mig.sock",
                MigrationUrl::Unix("/run/petrel/mig.sock".into()),
            ),
            (
                "unix:relative.sock",
                MigrationUrl::Unix("relative.sock".into()),
            ),
            (
                "tcp:127.0.0.1:4444",
                MigrationUrl::Tcp("127.0.0.1".into(), 4444),
            ),
            ("tcp:[::1]:4444", MigrationUrl::Tcp("::1".into(), 4444)),
            ("tcp:[fe80::1]:1", MigrationUrl::Tcp("fe80::1".into(), 1)),
            (
                "tcp:dest-host.example:65535",
                MigrationUrl::Tcp("dest-host.example".into(), 65535),
            ),
            ("tcp:localhost:0", MigrationUrl::Tcp("localhost".into(), 0)),
        ];
        for (text, want) in cases {
            let got = parse(text).unwrap();
            assert_eq!(got, want, "{text}");
            assert_eq!(got.to_string(), text);
        }
    }

    #[test]
    fn bad_forms_are_refused_with_their_reason() {
        assert_eq!(
            parse("/tmp/x"),
            Err(UrlError::MissingScheme("/tmp/x".into()))
        );
        assert_eq!(
            parse("http:x:1"),
            Err(UrlError::UnknownScheme("http".into()))
        );
        assert_eq!(parse("unix:"), Err(UrlError::EmptyPath));
        assert_eq!(parse("tcp:host"), Err(UrlError::MissingPort("host".into())));
        assert_eq!(
            parse("tcp:host:"),
            Err(UrlError::MissingPort("host:".into()))
        );
        assert_eq!(parse("tcp::4444"), Err(UrlError::EmptyHost));
        assert_eq!(
            parse("tcp:host:70000"),
            Err(UrlError::BadPort("70000".into()))
        );
        assert_eq!(parse("tcp:host:-1"), Err(UrlError::BadPort("-1".into())));
        assert_eq!(
            parse("tcp:host:http"),
            Err(UrlError::BadPort("http".into()))
        );
        assert_eq!(
            parse("tcp:::1:4444"),
            Err(UrlError::UnbracketedIpv6("::1:4444".into()))
        );
        assert_eq!(
            parse("tcp:[::1:4444"),
            Err(UrlError::BadBrackets("[::1:4444".into()))
        );
        assert_eq!(
            parse("tcp:[nothost]:1"),
            Err(UrlError::BadBrackets("[nothost]:1".into()))
        );
        assert_eq!(
            parse("tcp:[::1]4444"),
            Err(UrlError::MissingPort("[::1]4444".into()))
        );
        assert_eq!(parse("tcp:a b:1"), Err(UrlError::BadHost("a b".into())));
    }
}
