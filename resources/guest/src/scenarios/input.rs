//! `input`: every virtio-input device through `virtio-drivers`' `VirtIOInput`. The guest
//! prints what each device's config space says, then `INPUT ready`, then the first N events
//! (N is `input.count=<N>` on the command line, 0 when absent) in the order it reads them:
//!
//! ```text
//! INPUT dev=<i> name=<name> serial=<serial> ids=<bustype>:<vendor>:<product>:<version> props=<bytes>
//! INPUT dev=<i> ev=<type> size=<bytes> codes=<number of codes> first=<code> last=<code>
//! INPUT dev=<i> abs=<axis> min=<min> max=<max> fuzz=<fuzz> flat=<flat> res=<res>
//! INPUT ready
//! INPUT dev=<i> type=<type> code=<code> value=<value>
//! ```
//!
//! `ev` lines come for the event types Linux's driver asks about that have a nonzero size;
//! ids are hexadecimal, everything else decimal. The drivers are polled (the guest runs with
//! interrupts off) round robin.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use virtio_drivers::device::input::{InputEvent, VirtIOInput};
use virtio_drivers::transport::mmio::MmioTransport;

use crate::rt::bootparams::BootParams;
use crate::rt::deadline::Deadline;
use crate::virtio::{self, Device, DeviceType, PetrelHal};

pub type Input = VirtIOInput<PetrelHal, MmioTransport<'static>>;

/// The event types Linux's virtio_input driver queries: EV_KEY, EV_REL, EV_ABS, EV_MSC,
/// EV_SW, EV_LED, EV_SND, EV_REP.
const EV_TYPES: [u8; 8] = [0x01, 0x02, 0x03, 0x04, 0x05, 0x11, 0x12, 0x14];
const EV_ABS: u8 = 0x03;
/// How long the host gets to send each event.
const EVENTS_TIMEOUT_MS: u64 = 120_000;

pub fn run(boot: &BootParams) -> Result<(), String> {
    let cmdline = boot.cmdline();
    let count = match cmdline.get("input.count") {
        None => 0,
        Some(text) => text
            .parse::<usize>()
            .map_err(|_| format!("input.count=`{text}` is not an event count"))?,
    };
    let mut inputs = open(virtio::take(boot, DeviceType::Input)?)?;
    println!("INPUT ready");
    for seen in 0..count {
        if next_event(&mut inputs).is_none() {
            // The devices still own the posted event buffers: end here.
            crate::scenarios::fail_now(format_args!(
                "got {seen} of {count} input events within {EVENTS_TIMEOUT_MS} ms"
            ));
        }
    }
    Ok(())
}

/// The input `devices`, initialised, each described on the serial port.
pub fn open(devices: Vec<Device>) -> Result<Vec<Input>, String> {
    let mut inputs = Vec::new();
    for (i, device) in devices.into_iter().enumerate() {
        let window = device.window;
        let mut input = Input::new(device.transport)
            .map_err(|e| format!("input device {i} ({window}): initialisation failed: {e}"))?;
        describe(i, &mut input).map_err(|e| format!("input device {i}: {e}"))?;
        inputs.push(input);
    }
    if inputs.is_empty() {
        return Err("no virtio input device".into());
    }
    Ok(inputs)
}

/// Polls the devices round robin for the next event and prints it as
/// `INPUT dev=<i> type=<type> code=<code> value=<value>`; `None` when none came within
/// `EVENTS_TIMEOUT_MS`.
pub fn next_event(inputs: &mut [Input]) -> Option<InputEvent> {
    let deadline = Deadline::after_ms(EVENTS_TIMEOUT_MS);
    loop {
        for (i, input) in inputs.iter_mut().enumerate() {
            if let Some(e) = input.pop_pending_event() {
                println!(
                    "INPUT dev={i} type={} code={} value={}",
                    e.event_type, e.code, e.value
                );
                return Some(e);
            }
        }
        if deadline.expired() {
            return None;
        }
        core::hint::spin_loop();
    }
}

/// Prints what device `i`'s config space says.
fn describe(i: usize, input: &mut Input) -> Result<(), String> {
    fn err(what: &'static str) -> impl Fn(virtio_drivers::Error) -> String {
        move |e| format!("reading {what}: {e}")
    }
    let name = input.name().map_err(err("the name"))?;
    let serial = input.serial_number().map_err(err("the serial"))?;
    let ids = input.ids().map_err(err("the ids"))?;
    let props = input.prop_bits().map_err(err("the property bits"))?;
    println!(
        "INPUT dev={i} name={name} serial={serial} ids={:x}:{:04x}:{:04x}:{:x} props={}",
        ids.bustype,
        ids.vendor,
        ids.product,
        ids.version,
        props.len()
    );
    for ev in EV_TYPES {
        let bits = input.ev_bits(ev).map_err(err("event bits"))?;
        if bits.is_empty() {
            continue;
        }
        let codes: Vec<usize> = (0..bits.len() * 8)
            .filter(|b| bits[b / 8] & (1 << (b % 8)) != 0)
            .collect();
        let first = codes.first().map_or(String::from("-"), |c| format!("{c}"));
        let last = codes.last().map_or(String::from("-"), |c| format!("{c}"));
        println!(
            "INPUT dev={i} ev={ev} size={} codes={} first={first} last={last}",
            bits.len(),
            codes.len()
        );
        if ev == EV_ABS {
            for axis in codes {
                let a = input.abs_info(axis as u8).map_err(err("an axis"))?;
                println!(
                    "INPUT dev={i} abs={axis} min={} max={} fuzz={} flat={} res={}",
                    a.min, a.max, a.fuzz, a.flat, a.res
                );
            }
        }
    }
    Ok(())
}
