//! Credit-based flow control and backpressure, both directions.

use super::*;

#[test]
fn host_to_guest_stays_within_the_guest_credit() {
    let mut s = setup();
    let mem = memory();
    let mut d = Driver::new(&mem);
    d.buf_alloc = 1000;
    d.activate(&mut s.vsock);
    d.post_rx(&mut s.vsock, 8);
    let (mut host, hp) = host_connect(&mut s, &mut d, 7);
    host.write_all(&[7u8; 3000]).unwrap();
    pump(&mut s.vsock);
    let got = d.received();
    let data: usize = got.iter().map(|(_, b)| b.len()).sum();
    assert_eq!(data, 1000);
    assert_eq!(got.last().unwrap().0.op, op::CREDIT_REQUEST);
    // The guest consumed 600 bytes and says so: 600 more arrive.
    d.fwd_cnt = 600;
    d.send(&mut s.vsock, d.header(op::CREDIT_UPDATE, 7, hp), &[]);
    pump(&mut s.vsock);
    let data: usize = d.received().iter().map(|(_, b)| b.len()).sum();
    assert_eq!(data, 600);
}

#[test]
fn guest_past_its_credit_is_reset() {
    let mut s = setup();
    let mem = memory();
    let mut d = Driver::new(&mem);
    d.activate(&mut s.vsock);
    d.post_rx(&mut s.vsock, 8);
    let (mut host, hp) = host_connect(&mut s, &mut d, 7);
    // The host does not read: the guest may fill BUF_ALLOC, not a byte more.
    let chunk = vec![1u8; MAX_PAYLOAD];
    let mut sent = 0;
    while sent < BUF_ALLOC as usize {
        d.send(&mut s.vsock, d.header(op::RW, 7, hp), &chunk);
        sent += chunk.len();
    }
    assert_eq!(s.vsock.connection_count(), 1);
    d.send(&mut s.vsock, d.header(op::RW, 7, hp), &[1u8; 1]);
    // Whatever fit in the socket may have gone; the rest is beyond the guest's credit.
    let socket_took = s.vsock.metrics().tx_bytes;
    if socket_took == 0 {
        assert_eq!(s.vsock.metrics().credit_violations, 1);
        assert_eq!(s.vsock.connection_count(), 0);
        assert!(ops(&d.received()).contains(&op::RST));
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut rest = Vec::new();
        let _ = host.read_to_end(&mut rest);
    }
}

#[test]
fn slow_host_reader_loses_nothing_and_stalls_only_its_connection() {
    let mut s = setup();
    let mem = memory();
    let mut d = Driver::new(&mem);
    d.activate(&mut s.vsock);
    d.post_rx(&mut s.vsock, 32);
    let (slow, hp1) = host_connect(&mut s, &mut d, 1);
    let (mut fast, hp2) = host_connect(&mut s, &mut d, 2);

    let pattern: Vec<u8> = (0..BUF_ALLOC as usize).map(|i| (i % 251) as u8).collect();
    for chunk in pattern.chunks(32 << 10) {
        d.send(&mut s.vsock, d.header(op::RW, 1, hp1), chunk);
        // The other connection keeps flowing while the slow one's socket is full.
        d.send(&mut s.vsock, d.header(op::RW, 2, hp2), b"x");
        let mut b = [0u8; 1];
        fast.read_exact(&mut b).unwrap();
    }
    assert_eq!(s.vsock.connection_count(), 2);
    let reader = std::thread::spawn(move || {
        let mut slow = slow;
        let mut got = vec![0u8; BUF_ALLOC as usize];
        slow.read_exact(&mut got).unwrap();
        got
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.vsock.metrics().tx_bytes < BUF_ALLOC as u64 + 8 {
        assert!(Instant::now() < deadline, "host never got the bytes");
        pump(&mut s.vsock);
    }
    assert_eq!(reader.join().unwrap(), pattern);
    // The guest was told its credit is back.
    let updates: Vec<_> = d
        .received()
        .into_iter()
        .filter(|(h, _)| h.op == op::CREDIT_UPDATE && h.dst_port == 1)
        .collect();
    // The guest was told of at least half its buffer free again (the threshold for updates).
    assert!(updates.last().unwrap().0.fwd_cnt >= BUF_ALLOC / 2);
}

#[test]
fn guest_shutdown_both_ways_resets_and_closes_the_host_socket() {
    let mut s = setup();
    let mem = memory();
    let mut d = Driver::new(&mem);
    d.activate(&mut s.vsock);
    d.post_rx(&mut s.vsock, 8);
    let (mut host, hp) = host_connect(&mut s, &mut d, 9);
    d.send(&mut s.vsock, d.header(op::RW, 9, hp), b"last words");
    let mut h = d.header(op::SHUTDOWN, 9, hp);
    h.flags = shutdown::BOTH;
    d.send(&mut s.vsock, h, &[]);
    assert_eq!(ops(&d.received()), [op::RST]);
    let mut rest = Vec::new();
    host.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"last words");
}
