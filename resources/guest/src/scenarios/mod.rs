//! The scenario registry and dispatcher.
//!
//! A scenario prints what it checks, then returns `Ok(())` (the dispatcher prints
//! `PASS <name>` and ends the run the scenario's way) or `Err(reason)` (`FAIL <name>: <reason>`,
//! then reset). Add a scenario by adding a module and a row to `SCENARIOS`.

mod acpi;
mod blk;
mod blkrate;
mod blkswap;
mod boot;
mod console;
mod count;
mod crash;
mod demo;
mod fs;
mod gpu;
mod input;
mod machine;
mod net;
pub mod numa;
mod powerbutton;
mod screen;
mod smp;
mod snapshot;
mod snapshot_devices;
pub mod snapshot_proto;
mod vsock;

use alloc::string::String;
use core::fmt;
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::rt::bootparams::BootParams;
use crate::rt::power;

/// What runs when the command line names no scenario.
pub const DEFAULT: &str = "demo";

/// How a scenario ends the run after passing.
#[derive(Clone, Copy)]
pub enum Exit {
    Reset,
    PowerOff,
}

pub struct Scenario {
    pub name: &'static str,
    pub run: fn(&BootParams) -> Result<(), String>,
    pub exit: Exit,
}

pub static SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "boot",
        run: boot::run,
        exit: Exit::Reset,
    },
    Scenario {
        name: "numa",
        run: numa::run,
        exit: Exit::PowerOff,
    },
    Scenario {
        name: "smp",
        run: smp::run,
        exit: Exit::Reset,
    },
    Scenario {
        name: "demo",
        run: demo::run,
        exit: Exit::PowerOff,
    },
    Scenario {
        name: "machine",
        run: machine::run,
        exit: Exit::Reset,
    },
    Scenario {
        name: "triplefault",
        run: crash::triple_fault,
        exit: Exit::Reset,
    },
    Scenario {
        name: "count",
        run: count::run,
        exit: Exit::PowerOff,
    },
    Scenario {
        name: "idle",
        run: crash::idle,
        exit: Exit::Reset,
    },
    Scenario {
        name: "blk",
        run: blk::run,
        exit: Exit::Reset,
    },
    Scenario {
        name: "net",
        run: net::run,
        exit: Exit::Reset,
    },
    Scenario {
        name: "console",
        run: console::run,
        exit: Exit::Reset,
    },
    Scenario {
        name: "blkrate",
        run: blkrate::run,
        exit: Exit::Reset,
    },
    Scenario {
        name: "blkswap",
        run: blkswap::run,
        exit: Exit::Reset,
    },
    Scenario {
        name: "vsock",
        run: vsock::run,
        exit: Exit::Reset,
    },
    Scenario {
        name: "input",
        run: input::run,
        exit: Exit::Reset,
    },
    Scenario {
        name: "gpu",
        run: gpu::run,
        exit: Exit::Reset,
    },
    Scenario {
        name: "screen",
        run: screen::run,
        exit: Exit::Reset,
    },
    Scenario {
        name: "snapshot",
        run: snapshot::run,
        exit: Exit::PowerOff,
    },
    Scenario {
        name: "acpi",
        run: acpi::run,
        exit: Exit::PowerOff,
    },
    Scenario {
        name: "fs",
        run: fs::run,
        exit: Exit::Reset,
    },
    Scenario {
        name: "powerbutton",
        run: powerbutton::run,
        exit: Exit::PowerOff,
    },
];

/// Index into `SCENARIOS` of the running scenario (`usize::MAX` before one starts).
static CURRENT: AtomicUsize = AtomicUsize::new(usize::MAX);

/// The running scenario's name, for the panic handler.
pub fn current() -> &'static str {
    SCENARIOS
        .get(CURRENT.load(Ordering::Relaxed))
        .map_or("guest", |s| s.name)
}

/// Runs the scenario called `name`, reports the outcome and ends the run.
pub fn run(name: &str, boot: &BootParams) -> ! {
    let Some(index) = SCENARIOS.iter().position(|s| s.name == name) else {
        println!("FAIL {name}: unknown scenario");
        power::reset();
    };
    CURRENT.store(index, Ordering::Relaxed);
    let scenario = &SCENARIOS[index];
    match (scenario.run)(boot) {
        Ok(()) => {
            println!("PASS {name}");
            match scenario.exit {
                Exit::Reset => power::reset(),
                Exit::PowerOff => power::power_off(),
            }
        }
        Err(reason) => fail_now(reason),
    }
}

/// Reports `FAIL <scenario>: <reason>` and resets at once, without returning: for failures
/// after which unwinding the scenario would not be sound or could hang (a device that timed
/// out still owns buffers on the stack, and dropping its driver waits for it).
pub fn fail_now(reason: impl fmt::Display) -> ! {
    println!("FAIL {}: {reason}", current());
    power::reset()
}
