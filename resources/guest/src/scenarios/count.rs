//! `count`: counts forever, printing `COUNT <n>` about every millisecond of guest time, so
//! the host can see whether the guest runs (pause, resume, snapshots).

use alloc::string::String;

use crate::rt::cpu;

pub fn run(_: &crate::rt::bootparams::BootParams) -> Result<(), String> {
    let mut n: u64 = 0;
    loop {
        println!("COUNT {n}");
        n += 1;
        cpu::spin(100_000);
    }
}
