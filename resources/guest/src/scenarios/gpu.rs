//! `gpu`: draws a known pattern through the first virtio-gpu and updates part of it, with the
//! command layer in `virtio::gpu`.
//!
//! ```text
//! GPU display=<w>x<h> scanouts=<n> edid=<w>x<h>   (edid=none without VIRTIO_GPU_F_EDID)
//! GPU errors=<t>,...  (response types to five malformed commands, see `bad_commands`)
//! GPU frame1      (the whole pattern is on the screen)
//! GPU frame2      (a sub-rectangle was changed, transferred and flushed)
//! GPU hold        (with gpu.hold=1: the picture stays up until the VM is killed)
//! ```
//!
//! Pixel (x, y) is RGBA `[(3x) ^ s, 5y, (x + y) ^ s, 255]` (bytes, wrapping), with `s = 0`
//! for frame 1 and `s = 0x5a` inside the sub-rectangle `(w/4, h/4, w/2, h/2)` of frame 2.
//! Between the two frames the guest waits `gpu.wait_ms` (default 0) for the host to look.
//! The resource is B8G8R8A8 with its backing in two scatter entries.

use alloc::format;
use alloc::string::String;

use crate::rt::bootparams::BootParams;
use crate::rt::cpu;
use crate::rt::deadline::Deadline;
use crate::rt::pages;
use crate::virtio::gpu::{self, Gpu, Rect, Request};
use crate::virtio::{self, Device, DeviceType};

const RESOURCE: u32 = 1;
const SALT: u8 = 0x5a;
const FENCE: u64 = 0xfe_0001;

/// The pattern's RGBA at (x, y).
fn pattern(x: u32, y: u32, salt: u8) -> [u8; 4] {
    [
        (x.wrapping_mul(3) as u8) ^ salt,
        y.wrapping_mul(5) as u8,
        (x.wrapping_add(y) as u8) ^ salt,
        0xff,
    ]
}

/// Writes `pixel(x, y)` (RGBA) for `r` into the B8G8R8A8 buffer at `base` (`w` pixels a row).
fn draw(base: u64, w: u32, r: Rect, pixel: impl Fn(u32, u32) -> [u8; 4]) {
    for y in r.y..r.y + r.height {
        for x in r.x..r.x + r.width {
            let [red, green, blue, alpha] = pixel(x, y);
            let at = base + (u64::from(y) * u64::from(w) + u64::from(x)) * 4;
            let word = u32::from_le_bytes([blue, green, red, alpha]);
            // SAFETY: `base` is the start of `pages` this scenario allocated for a `w`-wide
            // frame (identity-mapped RAM nothing else uses) and (x, y) lies inside it, so `at`
            // is an aligned, in-bounds u32. Volatile: the device reads it.
            unsafe { (at as usize as *mut u32).write_volatile(word) };
        }
    }
}

fn cmdline_u64(boot: &BootParams, key: &str) -> Result<u64, String> {
    match boot.cmdline().get(key) {
        None => Ok(0),
        Some(v) => v.parse().map_err(|_| format!("bad {key}={v}")),
    }
}

/// The first GPU with frame 1 of the pattern on its screen.
pub struct Frame {
    pub gpu: Gpu,
    /// Where the resource's backing starts (identity-mapped guest memory).
    base: u64,
    pub width: u32,
    pub height: u32,
}

pub fn run(boot: &BootParams) -> Result<(), String> {
    let wait_ms = cmdline_u64(boot, "gpu.wait_ms")?;
    let hold = cmdline_u64(boot, "gpu.hold")? == 1;
    let Frame {
        mut gpu,
        base,
        width: w,
        height: h,
    } = first_frame(device(boot)?, true)?;

    let deadline = Deadline::after_ms(wait_ms);
    while !deadline.expired() {
        core::hint::spin_loop();
    }

    let sub = Rect {
        x: w / 4,
        y: h / 4,
        width: w / 2,
        height: h / 2,
    };
    draw(base, w, sub, |x, y| pattern(x, y, SALT));
    show(&mut gpu, sub, w)?;
    gpu.cursor_command(
        Request::new(gpu::CMD_MOVE_CURSOR)
            .u32(0)
            .u32(w / 2)
            .u32(h / 2)
            .u32(0)
            .u32(0)
            .u32(0)
            .u32(0)
            .u32(0),
    )?;
    println!("GPU frame2");
    if hold {
        println!("GPU hold");
        cpu::halt_forever();
    }
    Ok(())
}

impl Frame {
    /// Paints the whole frame with `pixel(x, y)` (RGBA), transfers and flushes it.
    pub fn paint(&mut self, pixel: impl Fn(u32, u32) -> [u8; 4]) -> Result<(), String> {
        let whole = Rect {
            x: 0,
            y: 0,
            width: self.width,
            height: self.height,
        };
        draw(self.base, self.width, whole, pixel);
        show(&mut self.gpu, whole, self.width)
    }
}

/// The first virtio-gpu on the command line.
fn device(boot: &BootParams) -> Result<Device, String> {
    virtio::take(boot, DeviceType::GPU)?
        .into_iter()
        .next()
        .ok_or_else(|| "no virtio gpu device".into())
}

/// Starts the GPU `device`, prints its display and EDID, draws frame 1 of the pattern into a
/// resource and shows it (`GPU frame1`); with `check_errors`, first sends the malformed
/// commands of `bad_commands` and prints their response types.
pub fn first_frame(device: Device, check_errors: bool) -> Result<Frame, String> {
    let mut gpu = Gpu::new(device.transport)?;
    let scanouts = gpu.num_scanouts()?;
    let (w, h) = gpu.display_size()?;
    let edid = if gpu.edid {
        let e = gpu.edid()?;
        check_edid(&e)?
    } else {
        String::from("none")
    };
    println!("GPU display={w}x{h} scanouts={scanouts} edid={edid}");

    let len = u64::from(w) * u64::from(h) * 4;
    let base = pages::alloc(len.div_ceil(4096)).ok_or("no memory for the frame")?;
    let whole = Rect {
        x: 0,
        y: 0,
        width: w,
        height: h,
    };
    draw(base, w, whole, |x, y| pattern(x, y, 0));
    gpu.expect_ok(
        "RESOURCE_CREATE_2D",
        Request::new(gpu::CMD_RESOURCE_CREATE_2D)
            .u32(RESOURCE)
            .u32(gpu::FORMAT_B8G8R8A8)
            .u32(w)
            .u32(h),
    )?;
    // Two scatter entries: the first page, then the rest.
    let first = len.min(4096);
    let mut attach = Request::new(gpu::CMD_RESOURCE_ATTACH_BACKING)
        .u32(RESOURCE)
        .u32(if len > first { 2 } else { 1 })
        .u64(base)
        .u32(first as u32)
        .u32(0);
    if len > first {
        attach = attach.u64(base + first).u32((len - first) as u32).u32(0);
    }
    gpu.expect_ok("RESOURCE_ATTACH_BACKING", attach)?;
    if check_errors {
        println!("GPU errors={}", bad_commands(&mut gpu, w, h)?);
    }
    gpu.expect_ok(
        "SET_SCANOUT",
        Request::new(gpu::CMD_SET_SCANOUT)
            .rect(whole)
            .u32(0)
            .u32(RESOURCE),
    )?;
    show(&mut gpu, whole, w)?;
    println!("GPU frame1");
    Ok(Frame {
        gpu,
        base,
        width: w,
        height: h,
    })
}

/// Malformed commands, each answered with an error response: the response types, in order
/// (an id in use, a scanout that does not exist, a resource past the memory cap, a flush
/// outside the resource, an unknown command).
fn bad_commands(gpu: &mut Gpu, w: u32, h: u32) -> Result<String, String> {
    let requests = [
        Request::new(gpu::CMD_RESOURCE_CREATE_2D)
            .u32(RESOURCE)
            .u32(gpu::FORMAT_B8G8R8A8)
            .u32(4)
            .u32(4),
        Request::new(gpu::CMD_SET_SCANOUT)
            .rect(Rect {
                x: 0,
                y: 0,
                width: w,
                height: h,
            })
            .u32(5)
            .u32(RESOURCE),
        Request::new(gpu::CMD_RESOURCE_CREATE_2D)
            .u32(RESOURCE + 1)
            .u32(gpu::FORMAT_B8G8R8A8)
            .u32(60_000)
            .u32(60_000),
        Request::new(gpu::CMD_RESOURCE_FLUSH)
            .rect(Rect {
                x: w,
                y: 0,
                width: 1,
                height: 1,
            })
            .u32(RESOURCE)
            .u32(0),
        Request::new(0x0999),
    ];
    let mut kinds = String::new();
    for (i, req) in requests.into_iter().enumerate() {
        let resp = gpu.command(req)?;
        if i > 0 {
            kinds.push(',');
        }
        kinds.push_str(&format!("{:#x}", resp.kind));
    }
    Ok(kinds)
}

/// TRANSFER_TO_HOST_2D and a fenced RESOURCE_FLUSH of `r`; the fence must come back.
fn show(gpu: &mut Gpu, r: Rect, w: u32) -> Result<(), String> {
    let offset = (u64::from(r.y) * u64::from(w) + u64::from(r.x)) * 4;
    gpu.expect_ok(
        "TRANSFER_TO_HOST_2D",
        Request::new(gpu::CMD_TRANSFER_TO_HOST_2D)
            .rect(r)
            .u64(offset)
            .u32(RESOURCE)
            .u32(0),
    )?;
    let resp = gpu.expect_ok(
        "RESOURCE_FLUSH",
        Request::new(gpu::CMD_RESOURCE_FLUSH)
            .fenced(FENCE)
            .rect(r)
            .u32(RESOURCE)
            .u32(0),
    )?;
    if resp.flags & gpu::FLAG_FENCE == 0 || resp.fence_id != FENCE {
        return Err(format!(
            "RESOURCE_FLUSH fence not echoed: flags {:#x} id {:#x}",
            resp.flags, resp.fence_id
        ));
    }
    Ok(())
}

/// Checks the EDID header and checksum; returns its preferred mode as `WxH`.
fn check_edid(e: &[u8]) -> Result<String, String> {
    if e.len() < 128 || e[..8] != [0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0] {
        return Err(format!("bad EDID header ({} bytes)", e.len()));
    }
    if e[..128].iter().fold(0u8, |s, b| s.wrapping_add(*b)) != 0 {
        return Err("bad EDID checksum".into());
    }
    let d = &e[54..72];
    let w = u32::from(d[2]) | (u32::from(d[4] >> 4) << 8);
    let h = u32::from(d[5]) | (u32::from(d[7] >> 4) << 8);
    Ok(format!("{w}x{h}"))
}
