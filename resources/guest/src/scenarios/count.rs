//! `count`: counts forever, printing `COUNT <n>` about every millisecond of guest time, so
//! the host can see whether the guest runs (pause, resume, snapshots). It also watches the
//! keyboard: when Ctrl+Alt+Del arrives (the API's `SendCtrlAltDel`), it prints
//!
//! ```text
//! CTRL-ALT-DEL
//! PASS count
//! ```
//!
//! and powers the machine off (petrel exits 0).
//!
//! The keyboard is polled, interrupts stay off: one read of the i8042 status port per count
//! (an exit to the VMM, about 11 µs on this project's slowest KVM), and the data port only
//! while the status says a byte waits. Both scancode sets are recognised (see
//! [`crate::rt::scancode`]).

use alloc::string::String;

use crate::rt::cpu;
use crate::rt::scancode::CtrlAltDel;

const I8042_DATA: u16 = 0x60;
const I8042_STATUS: u16 = 0x64;
/// Status bit 0: a byte waits in the output buffer.
const STATUS_OUTPUT_FULL: u8 = 1 << 0;
/// Status bit 5: the waiting byte comes from the aux (mouse) port, not the keyboard.
const STATUS_AUX_DATA: u8 = 1 << 5;
/// What an I/O port without a device reads: no controller, nothing to poll.
const NO_DEVICE: u8 = 0xff;
/// Bytes read per poll at most (the size of petrel's output buffer), so a controller that
/// always says "full" cannot stop the count.
const BYTES_PER_POLL: usize = 16;

pub fn run(_: &crate::rt::bootparams::BootParams) -> Result<(), String> {
    let mut keys = CtrlAltDel::new();
    let mut n: u64 = 0;
    loop {
        println!("COUNT {n}");
        n += 1;
        if ctrl_alt_del_pressed(&mut keys) {
            println!("CTRL-ALT-DEL");
            return Ok(());
        }
        cpu::spin(100_000);
    }
}

/// Reads what the keyboard sent since the last poll; true once Ctrl+Alt+Del was pressed.
fn ctrl_alt_del_pressed(keys: &mut CtrlAltDel) -> bool {
    for _ in 0..BYTES_PER_POLL {
        // SAFETY: reading the i8042's status register has no side effect and touches no
        // memory (a port without a device reads 0xff).
        let status = unsafe { cpu::inb(I8042_STATUS) };
        if status == NO_DEVICE || status & STATUS_OUTPUT_FULL == 0 {
            return false;
        }
        // SAFETY: reading the data port takes the waiting byte out of the controller's output
        // buffer; that is all it does (no DMA, no memory touched).
        let byte = unsafe { cpu::inb(I8042_DATA) };
        if status & STATUS_AUX_DATA == 0 && keys.feed(byte) {
            return true;
        }
    }
    false
}
