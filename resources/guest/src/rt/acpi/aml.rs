//! A small AML walker for the DSDT: it reads the declarations a VMM's DSDT is made of —
//! `Scope`, `Device`, `Name` with data objects (integers, strings, buffers, packages),
//! `OperationRegion`, and skips `Method` bodies (keeping their names) and other package-length
//! objects — without an interpreter. It finds every `Device` with its `_HID`, `_UID`, `_CCA`
//! and `_CRS` (decoded), its operation regions and the names of its methods, and the `\_S5_`
//! package. Anything else (executable code at the top level, an opcode it does not know) is an
//! error naming the offset: petrel's DSDT has none. All reads are bounds-checked and nesting is
//! limited, so no table can make it panic or recurse without end.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use super::{u16_at, u32_at, u64_at};

const ZERO_OP: u8 = 0x00;
const ONE_OP: u8 = 0x01;
const ALIAS_OP: u8 = 0x06;
const NAME_OP: u8 = 0x08;
const BYTE_PREFIX: u8 = 0x0a;
const WORD_PREFIX: u8 = 0x0b;
const DWORD_PREFIX: u8 = 0x0c;
const STRING_PREFIX: u8 = 0x0d;
const QWORD_PREFIX: u8 = 0x0e;
const SCOPE_OP: u8 = 0x10;
const BUFFER_OP: u8 = 0x11;
const PACKAGE_OP: u8 = 0x12;
const VAR_PACKAGE_OP: u8 = 0x13;
const METHOD_OP: u8 = 0x14;
const DUAL_NAME_PREFIX: u8 = 0x2e;
const MULTI_NAME_PREFIX: u8 = 0x2f;
const EXT_OP_PREFIX: u8 = 0x5b;
const ONES_OP: u8 = 0xff;
// After EXT_OP_PREFIX.
const EXT_MUTEX_OP: u8 = 0x01;
const EXT_EVENT_OP: u8 = 0x02;
const EXT_OP_REGION_OP: u8 = 0x80;
const EXT_DEVICE_OP: u8 = 0x82;
/// Field, Processor, PowerRes, ThermalZone, IndexField, BankField: skipped by their length.
const EXT_SKIPPED_WITH_PKG_LENGTH: [u8; 6] = [0x81, 0x83, 0x84, 0x85, 0x86, 0x87];
/// How deeply scopes and packages may nest.
const MAX_DEPTH: usize = 16;

/// A data object.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Object {
    Integer(u64),
    String(String),
    Buffer(Vec<u8>),
    Package(Vec<Object>),
    /// A reference to a named object, left unresolved.
    Name(String),
}

/// A resource descriptor of a `_CRS` buffer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Resource {
    Memory32Fixed {
        base: u32,
        len: u32,
        writable: bool,
    },
    Io {
        min: u16,
        max: u16,
        align: u8,
        len: u8,
    },
    /// An Extended Interrupt descriptor (one GSI of it per entry).
    Interrupt {
        gsi: u32,
        edge: bool,
        active_low: bool,
        shared: bool,
    },
    /// A legacy IRQ descriptor (one IRQ of its mask per entry).
    Irq {
        irq: u8,
        edge: bool,
        active_low: bool,
        shared: bool,
    },
}

/// The address space of an `OperationRegion` in system memory.
pub const SPACE_SYSTEM_MEMORY: u8 = 0;

/// An `OperationRegion` with constant offset and length.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Region {
    pub name: String,
    /// The address space (`SPACE_SYSTEM_MEMORY`, 1 for I/O ports, ...).
    pub space: u8,
    pub offset: u64,
    pub len: u64,
}

/// A `Device` and the objects this guest reads from it.
#[derive(Default)]
pub struct Device {
    /// Its absolute path, like `\_SB_.V000`.
    pub path: String,
    /// `_HID`, an EISA id decoded to text (`PNP0501`) or a string (`LNRO0005`).
    pub hid: Option<String>,
    pub uid: Option<u64>,
    pub cca: Option<u64>,
    pub crs: Option<Vec<Resource>>,
    /// Its operation regions, in table order.
    pub regions: Vec<Region>,
    /// The names of its methods (`_EVT`, ...), in table order; their bodies are not read.
    pub methods: Vec<String>,
}

/// What the walk found.
#[derive(Default)]
pub struct Namespace {
    pub devices: Vec<Device>,
    /// The `\_S5_` package.
    pub s5: Option<Vec<Object>>,
}

impl Namespace {
    /// The devices whose `_HID` is `hid`, in table order.
    pub fn with_hid<'a>(&'a self, hid: &'a str) -> impl Iterator<Item = &'a Device> + 'a {
        self.devices
            .iter()
            .filter(move |d| d.hid.as_deref() == Some(hid))
    }

    /// SLP_TYPa of `\_S5_`: the value to put in SLP_TYP to power off.
    pub fn s5_sleep_type(&self) -> Result<u8, String> {
        match self.s5.as_deref() {
            None => Err("the DSDT has no \\_S5_ package".into()),
            Some([Object::Integer(t), ..]) => {
                u8::try_from(*t).map_err(|_| format!("\\_S5_ SLP_TYPa {t} is out of range"))
            }
            Some(_) => Err("\\_S5_ does not start with an integer".into()),
        }
    }
}

/// Walks the AML of a DSDT (the table without its 36-byte header).
pub fn parse(aml: &[u8]) -> Result<Namespace, String> {
    let mut parser = Parser { aml, at: 0 };
    let mut ns = Namespace::default();
    parser.term_list(aml.len(), "\\", None, &mut ns, 0)?;
    Ok(ns)
}

/// `EISAID("PNP0501")` and friends: the compressed id as text.
pub fn eisa_id(value: u32) -> String {
    let v = value.swap_bytes();
    let letter = |shift: u32| (((v >> shift) & 0x1f) as u8 + 0x40) as char;
    format!(
        "{}{}{}{:04X}",
        letter(26),
        letter(21),
        letter(16),
        v & 0xffff
    )
}

struct Parser<'a> {
    aml: &'a [u8],
    at: usize,
}

fn join(scope: &str, name: &str) -> String {
    if name.starts_with('\\') {
        String::from(name)
    } else if scope.ends_with('\\') {
        format!("{scope}{name}")
    } else {
        format!("{scope}.{name}")
    }
}

impl Parser<'_> {
    fn err<T>(&self, what: &str) -> Result<T, String> {
        Err(format!("AML offset {:#x}: {what}", self.at))
    }

    fn byte(&mut self) -> Result<u8, String> {
        let b = *self.aml.get(self.at).ok_or("AML ends early")?;
        self.at += 1;
        Ok(b)
    }

    fn bytes(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.aml.len());
        let Some(end) = end else {
            return self.err("object overruns the table");
        };
        let out = &self.aml[self.at..end];
        self.at = end;
        Ok(out)
    }

    /// A PkgLength; returns where the package ends, checked against `limit`.
    fn pkg_end(&mut self, limit: usize) -> Result<usize, String> {
        let start = self.at;
        let lead = self.byte()?;
        let follow = usize::from(lead >> 6);
        let mut len = usize::from(if follow == 0 {
            lead & 0x3f
        } else {
            lead & 0x0f
        });
        for i in 0..follow {
            len |= usize::from(self.byte()?) << (4 + 8 * i);
        }
        match start.checked_add(len) {
            Some(end) if end <= limit && end >= self.at => Ok(end),
            _ => self.err("package length overruns its parent"),
        }
    }

    fn name_seg(&mut self) -> Result<String, String> {
        let seg = self.bytes(4)?;
        let ok = (seg[0].is_ascii_uppercase() || seg[0] == b'_')
            && seg[1..]
                .iter()
                .all(|&c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'_');
        if !ok {
            return self.err("bad name segment");
        }
        Ok(seg.iter().map(|&c| c as char).collect())
    }

    fn name_string(&mut self) -> Result<String, String> {
        let mut name = String::new();
        while let Some(&c @ (b'\\' | b'^')) = self.aml.get(self.at) {
            name.push(c as char);
            self.at += 1;
        }
        let segments = match self.aml.get(self.at) {
            Some(&ZERO_OP) => {
                self.at += 1;
                0
            }
            Some(&DUAL_NAME_PREFIX) => {
                self.at += 1;
                2
            }
            Some(&MULTI_NAME_PREFIX) => {
                self.at += 1;
                usize::from(self.byte()?)
            }
            _ => 1,
        };
        for i in 0..segments {
            if i > 0 {
                name.push('.');
            }
            name.push_str(&self.name_seg()?);
        }
        Ok(name)
    }

    /// An integer constant (a buffer's size, a variable package's count): no nesting.
    fn integer(&mut self) -> Result<u64, String> {
        let op = self.byte()?;
        Ok(match op {
            ZERO_OP => 0,
            ONE_OP => 1,
            ONES_OP => u64::MAX,
            BYTE_PREFIX => u64::from(self.byte()?),
            WORD_PREFIX => u64::from(u16_at(self.bytes(2)?, 0).unwrap_or(0)),
            DWORD_PREFIX => u64::from(u32_at(self.bytes(4)?, 0).unwrap_or(0)),
            QWORD_PREFIX => u64_at(self.bytes(8)?, 0).unwrap_or(0),
            _ => {
                self.at -= 1;
                return self.err(&format!("expected an integer, found opcode {op:#04x}"));
            }
        })
    }

    fn data_object(&mut self, depth: usize) -> Result<Object, String> {
        if depth == 0 {
            return self.err("objects nest too deeply");
        }
        let op = *self.aml.get(self.at).ok_or("AML ends early")?;
        if let ZERO_OP | ONE_OP | ONES_OP | BYTE_PREFIX | WORD_PREFIX | DWORD_PREFIX
        | QWORD_PREFIX = op
        {
            return self.integer().map(Object::Integer);
        }
        self.at += 1;
        Ok(match op {
            STRING_PREFIX => {
                let rest = &self.aml[self.at..];
                let Some(len) = rest.iter().position(|&c| c == 0) else {
                    return self.err("unterminated string");
                };
                let text = rest[..len].iter().map(|&c| c as char).collect();
                self.at += len + 1;
                Object::String(text)
            }
            BUFFER_OP => {
                let end = self.pkg_end(self.aml.len())?;
                let size = usize::try_from(self.integer()?).unwrap_or(usize::MAX);
                let Some(given) = end.checked_sub(self.at) else {
                    return self.err("buffer size overruns the buffer");
                };
                let mut data = self.bytes(given)?.to_vec();
                // A buffer is its size long: what the initialiser lacks is zeros.
                if size > data.len() + 4096 {
                    return self.err("buffer size is not plausible");
                }
                data.resize(size.max(data.len()), 0);
                data.truncate(size);
                Object::Buffer(data)
            }
            PACKAGE_OP | VAR_PACKAGE_OP => {
                let end = self.pkg_end(self.aml.len())?;
                if op == PACKAGE_OP {
                    self.byte()?;
                } else {
                    self.integer()?;
                }
                let mut elements = Vec::new();
                while self.at < end {
                    let element = match self.aml[self.at] {
                        b'\\'
                        | b'^'
                        | b'_'
                        | b'A'..=b'Z'
                        | DUAL_NAME_PREFIX
                        | MULTI_NAME_PREFIX => Object::Name(self.name_string()?),
                        _ => self.data_object(depth - 1)?,
                    };
                    elements.push(element);
                }
                if self.at != end {
                    return self.err("package elements overrun the package");
                }
                Object::Package(elements)
            }
            _ => {
                self.at -= 1;
                return self.err(&format!("unsupported data object opcode {op:#04x}"));
            }
        })
    }

    /// Declarations up to `end`, in `scope`; `device` is the enclosing device, if any.
    fn term_list(
        &mut self,
        end: usize,
        scope: &str,
        mut device: Option<&mut Device>,
        ns: &mut Namespace,
        depth: usize,
    ) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return self.err("scopes nest too deeply");
        }
        while self.at < end {
            let op = self.byte()?;
            match op {
                SCOPE_OP => {
                    let pkg_end = self.pkg_end(end)?;
                    let path = join(scope, &self.name_string()?);
                    self.term_list(pkg_end, &path, None, ns, depth + 1)?;
                }
                NAME_OP => {
                    let name = self.name_string()?;
                    let value = self.data_object(MAX_DEPTH)?;
                    self.named(scope, &name, value, device.as_deref_mut(), ns)?;
                }
                METHOD_OP => {
                    let method_end = self.pkg_end(end)?;
                    let name = self.name_string()?;
                    if self.at > method_end {
                        return self.err("method name overruns the method");
                    }
                    if let Some(d) = device.as_deref_mut() {
                        d.methods.push(name);
                    }
                    self.at = method_end;
                }
                ALIAS_OP => {
                    self.name_string()?;
                    self.name_string()?;
                }
                EXT_OP_PREFIX => match self.byte()? {
                    EXT_DEVICE_OP => {
                        let pkg_end = self.pkg_end(end)?;
                        let path = join(scope, &self.name_string()?);
                        let mut found = Device {
                            path: path.clone(),
                            ..Device::default()
                        };
                        self.term_list(pkg_end, &path, Some(&mut found), ns, depth + 1)?;
                        ns.devices.push(found);
                    }
                    EXT_MUTEX_OP => {
                        self.name_string()?;
                        self.byte()?;
                    }
                    EXT_EVENT_OP => {
                        self.name_string()?;
                    }
                    EXT_OP_REGION_OP => {
                        let region = Region {
                            name: self.name_string()?,
                            space: self.byte()?,
                            offset: self.integer()?,
                            len: self.integer()?,
                        };
                        if let Some(d) = device.as_deref_mut() {
                            d.regions.push(region);
                        }
                    }
                    ext if EXT_SKIPPED_WITH_PKG_LENGTH.contains(&ext) => {
                        self.at = self.pkg_end(end)?;
                    }
                    ext => {
                        self.at -= 2;
                        return self.err(&format!("unsupported opcode 0x5b {ext:#04x}"));
                    }
                },
                _ => {
                    self.at -= 1;
                    return self.err(&format!("unsupported opcode {op:#04x}"));
                }
            }
        }
        if self.at != end {
            return self.err("objects overrun their scope");
        }
        Ok(())
    }

    /// Records `Name(name, value)` declared in `scope`.
    fn named(
        &self,
        scope: &str,
        name: &str,
        value: Object,
        device: Option<&mut Device>,
        ns: &mut Namespace,
    ) -> Result<(), String> {
        if join(scope, name) == "\\_S5_" {
            let Object::Package(elements) = value else {
                return self.err("\\_S5_ is not a package");
            };
            ns.s5 = Some(elements);
            return Ok(());
        }
        let Some(device) = device else {
            return Ok(());
        };
        match (name, value) {
            ("_HID", Object::Integer(v)) => {
                let v = u32::try_from(v).map_err(|_| format!("{}: _HID too wide", device.path))?;
                device.hid = Some(eisa_id(v));
            }
            ("_HID", Object::String(s)) => device.hid = Some(s),
            ("_UID", Object::Integer(v)) => device.uid = Some(v),
            ("_CCA", Object::Integer(v)) => device.cca = Some(v),
            ("_CRS", Object::Buffer(b)) => {
                device.crs = Some(resources(&b).map_err(|e| format!("{} _CRS: {e}", device.path))?)
            }
            ("_HID" | "_UID" | "_CCA" | "_CRS", _) => {
                return Err(format!("{}: {name} has an unexpected type", device.path))
            }
            _ => {}
        }
        Ok(())
    }
}

/// Decodes a resource template (ACPI 6.5, 6.4) up to its end tag.
pub fn resources(b: &[u8]) -> Result<Vec<Resource>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < b.len() {
        let tag = b[at];
        let (name, data) = if tag & 0x80 == 0 {
            let len = usize::from(tag & 0x07);
            let data = b
                .get(at + 1..at + 1 + len)
                .ok_or("small descriptor overruns")?;
            at += 1 + len;
            ((tag >> 3) & 0x0f, data)
        } else {
            let len = usize::from(u16_at(b, at + 1).ok_or("large descriptor header overruns")?);
            let data = b
                .get(at + 3..at + 3 + len)
                .ok_or("large descriptor overruns")?;
            at += 3 + len;
            (tag, data)
        };
        let short = || format!("descriptor {tag:#04x} too short");
        match name {
            // End tag.
            0x0f if tag & 0x80 == 0 => return Ok(out),
            // IRQ: a mask of ISA IRQs and, optionally, flags (default edge, active high).
            0x04 if tag & 0x80 == 0 => {
                let mask = u16_at(data, 0).ok_or_else(short)?;
                let flags = data.get(2).copied().unwrap_or(0x01);
                for irq in (0..16).filter(|i| mask & (1 << i) != 0) {
                    out.push(Resource::Irq {
                        irq,
                        edge: flags & 0x01 != 0,
                        active_low: flags & 0x08 != 0,
                        shared: flags & 0x10 != 0,
                    });
                }
            }
            0x08 if tag & 0x80 == 0 => out.push(Resource::Io {
                min: u16_at(data, 1).ok_or_else(short)?,
                max: u16_at(data, 3).ok_or_else(short)?,
                align: *data.get(5).ok_or_else(short)?,
                len: *data.get(6).ok_or_else(short)?,
            }),
            0x86 => out.push(Resource::Memory32Fixed {
                writable: data.first().ok_or_else(short)? & 1 != 0,
                base: u32_at(data, 1).ok_or_else(short)?,
                len: u32_at(data, 5).ok_or_else(short)?,
            }),
            0x89 => {
                let flags = *data.first().ok_or_else(short)?;
                let count = usize::from(*data.get(1).ok_or_else(short)?);
                for i in 0..count {
                    out.push(Resource::Interrupt {
                        gsi: u32_at(data, 2 + 4 * i).ok_or_else(short)?,
                        edge: flags & 0x02 != 0,
                        active_low: flags & 0x04 != 0,
                        shared: flags & 0x08 != 0,
                    });
                }
            }
            _ => {}
        }
    }
    Err("no end tag".into())
}
