//! Hashes as text.

use std::fmt::Write;

/// Lowercase hex of a hash.
pub fn hex(hash: &[u8; 32]) -> String {
    let mut s = String::with_capacity(64);
    for b in hash {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lowercase_and_64_digits() {
        let mut h = [0u8; 32];
        h[0] = 0xab;
        h[31] = 0x01;
        let s = hex(&h);
        assert_eq!(s.len(), 64);
        assert!(s.starts_with("ab00") && s.ends_with("01"));
        assert_eq!(s, blake3::Hash::from_bytes(h).to_hex().as_str());
    }
}
