//! Malformed and hostile guest input: nothing panics, everything is counted.

use super::*;

#[test]
fn malformed_packets_are_dropped_or_reset_and_counted() {
    let mut s = setup();
    let mem = memory();
    let mut d = Driver::new(&mem);
    d.activate(&mut s.vsock);
    d.post_rx(&mut s.vsock, 16);

    // A header cut short.
    d.send_raw(&mut s.vsock, &[&[0u8; 20]]);
    // len past the buffer.
    let mut h = d.header(op::RW, 1, 2);
    h.len = 100;
    d.send_raw(&mut s.vsock, &[&h.to_bytes(), &[0u8; 10]]);
    // len over the limit.
    h.len = u32::MAX;
    d.send_raw(&mut s.vsock, &[&h.to_bytes()]);
    assert_eq!(s.vsock.metrics().malformed, 3);
    assert!(d.received().is_empty());

    // A write-only descriptor on tx.
    let addr = d.buffer(64);
    d.add_chain(1, &[(addr, 64, WO)]);
    s.vsock.queue_notify(1);
    // A buffer outside guest memory.
    d.add_chain(1, &[(MEM_SIZE as u64, 64, RO)]);
    s.vsock.queue_notify(1);
    assert_eq!(s.vsock.metrics().malformed, 5);
    // Every chain was used.
    assert_eq!(d.new_used(1).len(), 5);

    // Not from this guest: dropped, nobody to answer.
    let mut h = d.header(op::REQUEST, 1, 2);
    h.src_cid = CID + 1;
    d.send(&mut s.vsock, h, &[]);
    assert!(d.received().is_empty());
    // A datagram type: RST.
    let mut h = d.header(op::REQUEST, 1, 2);
    h.type_ = 2;
    d.send(&mut s.vsock, h, &[]);
    // To a CID that is not the host: RST.
    let mut h = d.header(op::REQUEST, 1, 2);
    h.dst_cid = 7;
    d.send(&mut s.vsock, h, &[]);
    // An unknown op, and data on no connection: RST.
    d.send(&mut s.vsock, d.header(99, 1, 2), &[]);
    d.send(&mut s.vsock, d.header(op::RW, 1, 2), b"nobody");
    // RST for an unknown connection is not answered.
    d.send(&mut s.vsock, d.header(op::RST, 1, 2), &[]);
    let got = d.received();
    assert_eq!(ops(&got), [op::RST, op::RST, op::RST, op::RST]);
    assert!(got.iter().all(|(h, _)| h.dst_cid == CID && h.dst_port == 1));
    assert_eq!(s.vsock.metrics().malformed, 9);
}

#[test]
fn short_rx_buffer_is_used_empty_and_the_packet_waits() {
    let mut s = setup();
    let mem = memory();
    let mut d = Driver::new(&mem);
    d.activate(&mut s.vsock);
    d.send(&mut s.vsock, d.header(op::REQUEST, 5000, 52), &[]);
    let addr = d.buffer(16);
    d.add_chain(0, &[(addr, 16, WO)]);
    s.vsock.queue_notify(0);
    assert_eq!(d.new_used(0), [(0, 0)]);
    assert_eq!(s.vsock.metrics().malformed, 1);
    d.post_rx(&mut s.vsock, 1);
    assert_eq!(ops(&d.received()), [op::RST]);
}

#[test]
fn replies_to_a_guest_that_posts_no_rx_buffers_are_bounded() {
    let mut s = setup();
    let mem = memory();
    let mut d = Driver::new(&mem);
    d.activate(&mut s.vsock);
    // Every RST answer waits for an rx buffer the guest never posts.
    let h = d.header(op::RW, 1, 2).to_bytes();
    let addr = d.buffer(HEADER_LEN as u32);
    mem.write_slice(&h, GuestAddress(addr)).unwrap();
    for _ in 0..(MAX_CONTROL + 100) / usize::from(QUEUE_SIZE) + 1 {
        for _ in 0..QUEUE_SIZE {
            d.add_chain(1, &[(addr, HEADER_LEN as u32, RO)]);
        }
        s.vsock.queue_notify(1);
        d.next_desc[1] = 0;
    }
    assert_eq!(s.vsock.control.len(), MAX_CONTROL);
    assert!(s.vsock.metrics().control_dropped >= 100);
}

#[test]
fn headers_round_trip() {
    let h = Header {
        src_cid: 1 << 40 | 3,
        dst_cid: 2,
        src_port: 1,
        dst_port: u32::MAX,
        len: 5,
        type_: 1,
        op: 5,
        flags: 3,
        buf_alloc: 77,
        fwd_cnt: 88,
    };
    assert_eq!(Header::parse(&h.to_bytes()), Some(h));
    assert_eq!(Header::parse(&[0u8; HEADER_LEN - 1]), None);
}

#[test]
fn random_packets_never_panic_and_the_device_keeps_working() {
    let mut s = setup();
    let mem = memory();
    let mut d = Driver::new(&mem);
    d.activate(&mut s.vsock);
    let listener = UnixListener::bind(format!("{}_7", s.uds.display())).unwrap();
    listener.set_nonblocking(true).unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let base = d.next_buf;
    for _ in 0..40 {
        d.next_buf = base;
        d.next_desc[1] = 0;
        for _ in 0..100 {
            let r = next();
            let mut h = d.header((r % 9) as u16, (r >> 8) as u32 % 4, 7);
            if r >> 20 & 7 == 0 {
                h.src_cid = next();
            }
            if r >> 23 & 7 == 0 {
                h.type_ = (next() % 4) as u16;
            }
            h.flags = (next() % 4) as u32;
            h.buf_alloc = next() as u32;
            h.fwd_cnt = next() as u32;
            let body_len = if h.op == op::RW || next() % 16 == 0 {
                (next() % 300) as usize
            } else {
                0
            };
            h.len = match next() % 4 {
                0 => next() as u32,
                _ => body_len as u32,
            };
            let body = vec![0x5a; body_len];
            let raw = h.to_bytes();
            let cut = (next() % (HEADER_LEN as u64 + 1)) as usize;
            match next() % 5 {
                0 => d.send_raw(&mut s.vsock, &[&raw[..cut]]),
                1 => d.send_raw(&mut s.vsock, &[&raw[..cut], &raw[cut..], &body]),
                _ => d.send_raw(&mut s.vsock, &[&raw, &body]),
            }
            while let Ok((peer, _)) = listener.accept() {
                drop(peer);
            }
            if next() % 8 == 0 {
                d.post_rx(&mut s.vsock, 1);
            }
        }
        d.next_desc[0] = 0;
        // The buffers' memory is reused by the next round: only the used ring is checked.
        d.new_used(0);
        s.vsock.process_host();
    }
    let m = s.vsock.metrics();
    assert!(
        m.malformed > 0 && m.connections > 0 && m.resets_sent > 0,
        "{m:?}"
    );
    // The device still serves a clean connection.
    let mut d = Driver::new(&mem);
    s.vsock.reset();
    d.activate(&mut s.vsock);
    d.post_rx(&mut s.vsock, 8);
    let (mut host, hp) = host_connect(&mut s, &mut d, 99);
    d.send(&mut s.vsock, d.header(op::RW, 99, hp), b"still here");
    let mut buf = [0u8; 10];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"still here");
}
