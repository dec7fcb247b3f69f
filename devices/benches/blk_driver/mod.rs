//! The guest driver of the blk bench's device cases: request slots laid out in guest
//! memory over one split virtqueue.

use memory::GuestMemoryMmap;
use virtio_bindings::virtio_blk::{VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use vm_memory::{Bytes, GuestAddress};

use crate::util::{Ring, XorShift, F_NEXT, F_WRITE};

pub const QSIZE: u16 = 256;
/// Guest-memory layout: the ring, then per-slot headers (16 bytes), status bytes and 4 KiB
/// data buffers.
pub const RING: u64 = 0;
pub const HEADERS: u64 = 0x1_0000;
pub const STATUS: u64 = 0x1_8000;
pub const DATA: u64 = 0x10_0000;
pub const BLOCK: u64 = 4096;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Read => "randread",
            Op::Write => "randwrite",
        }
    }
}

/// The guest driver of the device cases: slot `s` is the chain of descriptors 3s (header),
/// 3s+1 (data) and 3s+2 (status).
pub struct Driver {
    mem: GuestMemoryMmap,
    pub ring: Ring,
    rng: XorShift,
    blocks: u64,
    op: Op,
    /// The block each slot's request is for.
    slot_block: Vec<u64>,
}

impl Driver {
    pub fn new(mem: &GuestMemoryMmap, blocks: u64, op: Op, depth: usize) -> Self {
        let ring = Ring::new(mem, RING, QSIZE);
        let (request_type, data_flags) = match op {
            Op::Read => (VIRTIO_BLK_T_IN, F_WRITE),
            Op::Write => (VIRTIO_BLK_T_OUT, 0),
        };
        for slot in 0..depth as u16 {
            let d = 3 * slot;
            let s = u64::from(slot);
            ring.set_desc(d, HEADERS + 16 * s, 16, F_NEXT, d + 1);
            ring.set_desc(
                d + 1,
                DATA + BLOCK * s,
                BLOCK as u32,
                data_flags | F_NEXT,
                d + 2,
            );
            ring.set_desc(d + 2, STATUS + s, 1, F_WRITE, 0);
            let header = GuestAddress(HEADERS + 16 * s);
            mem.write_obj(request_type, header).expect("header");
            mem.write_obj(0u32, GuestAddress(HEADERS + 16 * s + 4))
                .expect("header");
            mem.write_slice(&[0x5a; BLOCK as usize], GuestAddress(DATA + BLOCK * s))
                .expect("data buffer");
        }
        Driver {
            mem: mem.clone(),
            ring,
            rng: XorShift::new(),
            blocks,
            op,
            slot_block: vec![0; depth],
        }
    }

    /// Posts `slot` again for a new random block (published later).
    pub fn post(&mut self, slot: usize) {
        let blk = self.rng.below(self.blocks);
        self.slot_block[slot] = blk;
        let s = slot as u64;
        let sector = blk * (BLOCK / 512);
        let m = &self.mem;
        m.write_obj(sector, GuestAddress(HEADERS + 16 * s + 8))
            .expect("sector");
        m.write_obj(0xffu8, GuestAddress(STATUS + s))
            .expect("status");
        if self.op == Op::Write {
            m.write_obj(blk, GuestAddress(DATA + BLOCK * s))
                .expect("data");
        }
        self.ring.push(3 * slot as u16);
    }

    /// Checks a used entry; returns its slot.
    pub fn complete(&self, head: u16, len: u32) -> usize {
        let slot = usize::from(head / 3);
        let s = slot as u64;
        assert!(
            head.is_multiple_of(3) && slot < self.slot_block.len(),
            "bad used head {head}"
        );
        let status: u8 = self.mem.read_obj(GuestAddress(STATUS + s)).expect("status");
        assert_eq!(status, 0, "request failed with status {status}");
        if self.op == Op::Read {
            assert_eq!(len, BLOCK as u32 + 1, "used length of a read");
            let got: u64 = self
                .mem
                .read_obj(GuestAddress(DATA + BLOCK * s))
                .expect("data");
            assert_eq!(
                got, self.slot_block[slot],
                "the device read the wrong block"
            );
        }
        slot
    }
}
