//! The `virtio_mmio.device=<size>@<addr>:<irq>[:<id>]` command-line tokens, in Linux's format
//! (`drivers/virtio/virtio_mmio.c`): `size` is a number with an optional `K`/`M`/`G`/`T`/`P`/`E`
//! suffix (binary multiples), `addr` a number, `irq` decimal, and the optional platform-device
//! `id` decimal (ignored). Numbers are read like C's `strtoull` with base 0: `0x` hex, a leading
//! `0` octal, else decimal.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::rt::cmdline::Cmdline;

/// The command-line key petrel (and Linux) use.
pub const KEY: &str = "virtio_mmio.device";

/// One device's MMIO window and interrupt line, as the command line gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioWindow {
    pub size: u64,
    pub addr: u64,
    pub irq: u32,
}

impl MmioWindow {
    /// The guest-physical range the window covers, `None` if it wraps around.
    pub fn end(&self) -> Option<u64> {
        self.addr.checked_add(self.size)
    }
}

impl fmt::Display for MmioWindow {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{:#x}@{:#x}:{}", self.size, self.addr, self.irq)
    }
}

/// Every `virtio_mmio.device` token, in command-line order. A malformed token is an error
/// naming it.
pub fn windows(cmdline: &Cmdline) -> Result<Vec<MmioWindow>, String> {
    cmdline
        .params()
        .filter(|&(key, _)| key == KEY)
        .map(|(_, value)| {
            let value = value.unwrap_or("");
            parse(value).map_err(|e| format!("malformed `{KEY}={value}`: {e}"))
        })
        .collect()
}

/// Parses a token's value, `<size>@<addr>:<irq>[:<id>]`.
pub fn parse(value: &str) -> Result<MmioWindow, String> {
    let (size, rest) = value
        .split_once('@')
        .ok_or("no `@` between the size and the address")?;
    let (addr, rest) = rest
        .split_once(':')
        .ok_or("no `:` between the address and the IRQ")?;
    let irq = match rest.split_once(':') {
        Some((irq, id)) => {
            id.parse::<i32>()
                .map_err(|_| format!("bad device id `{id}`"))?;
            irq
        }
        None => rest,
    };
    let size = parse_size(size)?;
    if size == 0 {
        return Err("the size is 0".into());
    }
    let addr = parse_whole(addr).map_err(|e| format!("bad address: {e}"))?;
    if !irq.bytes().all(|b| b.is_ascii_digit()) || irq.is_empty() {
        return Err(format!("bad IRQ `{irq}` (want a decimal number)"));
    }
    let irq = irq
        .parse::<u32>()
        .map_err(|_| format!("IRQ `{irq}` is out of range"))?;
    Ok(MmioWindow { size, addr, irq })
}

/// A size: a number with an optional binary-multiple suffix (Linux's `memparse`).
fn parse_size(text: &str) -> Result<u64, String> {
    let (number, rest) = parse_number(text).map_err(|e| format!("bad size: {e}"))?;
    let shift = match rest {
        "" => 0,
        "K" | "k" => 10,
        "M" | "m" => 20,
        "G" | "g" => 30,
        "T" | "t" => 40,
        "P" | "p" => 50,
        "E" | "e" => 60,
        _ => return Err(format!("bad size `{text}`: unknown suffix `{rest}`")),
    };
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("size `{text}` is out of range"))
}

/// A number that must take up all of `text`.
fn parse_whole(text: &str) -> Result<u64, String> {
    match parse_number(text)? {
        (number, "") => Ok(number),
        (_, rest) => Err(format!("`{text}` has trailing `{rest}`")),
    }
}

/// The number at the start of `text` (`strtoull` base 0) and what follows it.
fn parse_number(text: &str) -> Result<(u64, &str), String> {
    let (radix, digits) =
        if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
            (16, hex)
        } else if text.len() > 1 && text.starts_with('0') {
            (8, &text[1..])
        } else {
            (10, text)
        };
    let len = digits
        .find(|c: char| !c.is_digit(radix))
        .unwrap_or(digits.len());
    if len == 0 {
        return match radix {
            // A bare "0" followed by a suffix, like "0K".
            8 => Ok((0, digits)),
            _ => Err(format!("`{text}` is not a number")),
        };
    }
    let number = u64::from_str_radix(&digits[..len], radix)
        .map_err(|_| format!("`{text}` is out of range"))?;
    Ok((number, &digits[len..]))
}
