//! petrel's VMM: machine construction, vCPUs, the event loop, the lifecycle, x86_64
//! specifics (CPUID, MSRs, GDT and paging, boot parameters, MP table) and the CLI.

pub mod arch;
pub mod builder;
pub mod cli;
pub mod config;
pub mod control;
pub mod ctl;
pub mod device_manager;
pub mod launch;
pub mod loader;
pub mod logging;
pub mod machine;
pub mod migrate;
pub mod persist;
pub mod signals;
pub mod snapshot_cli;
pub mod stdin;
pub mod vstate;

pub use builder::{build, BuildError};
pub use config::VmConfig;
pub use launch::{launch, LaunchError, LaunchOptions};
pub use machine::Machine;
