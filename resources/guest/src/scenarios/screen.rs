//! `screen`: a screen and a pointer together, for the web console test. The guest shows
//! frame 1 of the `gpu` scenario's pattern (`GPU frame1`), opens the input devices as the
//! `input` scenario does (`INPUT ready`), then prints every event it reads until the left
//! button is released (`BTN_LEFT` 0), and passes:
//!
//! ```text
//! GPU frame1
//! INPUT ready
//! INPUT dev=<i> type=<type> code=<code> value=<value>
//! ...
//! ```

use alloc::string::String;
use alloc::vec::Vec;

use virtio_drivers::transport::Transport;

use super::{gpu, input};
use crate::rt::bootparams::BootParams;
use crate::virtio::{self, Device, DeviceType};

const EV_KEY: u16 = 0x01;
const BTN_LEFT: u16 = 0x110;

pub fn run(boot: &BootParams) -> Result<(), String> {
    let (gpus, inputs): (Vec<Device>, Vec<Device>) =
        virtio::take_kinds(boot, &[DeviceType::GPU, DeviceType::Input])?
            .into_iter()
            .partition(|d| d.transport.device_type() == DeviceType::GPU);
    let gpu = gpus.into_iter().next().ok_or("no virtio gpu device")?;
    // Kept until the end: the picture stays on the screen while the pointer is used.
    let _frame = gpu::first_frame(gpu, false)?;
    let mut inputs = input::open(inputs)?;
    println!("INPUT ready");
    loop {
        let Some(e) = input::next_event(&mut inputs) else {
            // The devices still own the posted event buffers: end here.
            crate::scenarios::fail_now("no left-button release arrived");
        };
        if e.event_type == EV_KEY && e.code == BTN_LEFT && e.value == 0 {
            return Ok(());
        }
    }
}
