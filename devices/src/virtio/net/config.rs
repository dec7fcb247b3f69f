//! The user's configuration of a network device: the TAP it uses and the guest's MAC address.

use std::fmt;
use std::str::FromStr;

use crate::rate_limiter::RateLimitConfig;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A network device as the user configures it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// The host TAP interface: attached to if it exists, created otherwise.
    pub tap: String,
    /// The device's name in the VM configuration, logs and metrics.
    pub id: String,
    /// The guest's MAC address; without one the device makes up a locally administered one.
    #[serde(default)]
    pub mac: Option<MacAddr>,
    /// Limits on what the guest receives (Firecracker's `rx_rate_limiter`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimitConfig>,
    /// Limits on what the guest sends (Firecracker's `tx_rate_limiter`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimitConfig>,
}

/// An Ethernet unicast MAC address, written `aa:bb:cc:dd:ee:ff`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr([u8; 6]);

/// Why a string is not a usable MAC address.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MacError {
    /// Not six two-digit hexadecimal bytes separated by colons.
    #[error(
        "invalid MAC address {input:?}: expected six hexadecimal bytes like 02:00:00:00:00:01"
    )]
    Malformed { input: String },
    /// The group bit is set: a NIC's own address must be unicast.
    #[error("MAC address {mac} is a multicast address; the guest needs a unicast one")]
    Multicast { mac: MacAddr },
    /// 00:00:00:00:00:00 is not an address.
    #[error("MAC address 00:00:00:00:00:00 is not a valid station address")]
    Zero,
}

impl MacAddr {
    /// `bytes` as an address, if it is a usable unicast one.
    pub fn new(bytes: [u8; 6]) -> Result<Self, MacError> {
        let mac = MacAddr(bytes);
        if bytes[0] & 1 != 0 {
            return Err(MacError::Multicast { mac });
        }
        if bytes == [0; 6] {
            return Err(MacError::Zero);
        }
        Ok(mac)
    }

    /// A random locally administered unicast address (`x2:xx:xx:xx:xx:xx`).
    pub fn random() -> std::io::Result<Self> {
        let mut bytes = [0u8; 6];
        fill_random(&mut bytes)?;
        bytes[0] = (bytes[0] & !0b11) | 0b10;
        // The local bit makes the address non-zero, and the group bit is clear.
        Ok(MacAddr(bytes))
    }

    /// The six bytes, in wire order.
    pub fn bytes(&self) -> [u8; 6] {
        self.0
    }
}

/// Fills `buf` from the kernel's random source.
fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: `rest` is a live, writable slice of `rest.len()` bytes; getrandom writes at
        // most that many bytes into it and keeps no reference.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(())
}

impl FromStr for MacAddr {
    type Err = MacError;

    fn from_str(s: &str) -> Result<Self, MacError> {
        let malformed = || MacError::Malformed {
            input: s.to_string(),
        };
        let mut bytes = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut bytes {
            let part = parts.next().ok_or_else(malformed)?;
            if part.len() != 2 || !part.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(malformed());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| malformed())?;
        }
        if parts.next().is_some() {
            return Err(malformed());
        }
        MacAddr::new(bytes)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MacAddr({self})")
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}
