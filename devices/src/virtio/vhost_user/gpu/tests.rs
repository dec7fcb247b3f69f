//! The display channel driven by a fake back end on the other end of a socketpair: replies,
//! the picture, and what petrel does with bad messages.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::channel::*;
use super::*;
use crate::virtio::gpu::protocol::RESP_OK_EDID;
use crate::virtio::gpu::GpuBackend;

fn kind(width: u32, height: u32) -> (VhostUserGpuKind, UnixStream) {
    let config = GpuConfig {
        width,
        height,
        backend: GpuBackend::VhostUser,
        socket: Some("/unused".into()),
        ..GpuConfig::default()
    };
    let mut kind = VhostUserGpuKind::from(config);
    let (ours, theirs) = UnixStream::pair().unwrap();
    theirs
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    kind.channel = Some(Channel::new(ours).unwrap());
    (kind, theirs)
}

fn send(backend: &mut UnixStream, request: u32, payload: &[u8]) {
    let mut msg = Vec::new();
    for word in [request, 0, payload.len() as u32] {
        msg.extend_from_slice(&word.to_le_bytes());
    }
    msg.extend_from_slice(payload);
    backend.write_all(&msg).unwrap();
}

fn words(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The reply the back end reads: (request, flags, payload).
fn reply(backend: &mut UnixStream) -> (u32, u32, Vec<u8>) {
    let mut header = [0u8; 12];
    backend.read_exact(&mut header).unwrap();
    let word = |i: usize| u32::from_le_bytes(header[i..i + 4].try_into().unwrap());
    let mut payload = vec![0u8; word(8) as usize];
    backend.read_exact(&mut payload).unwrap();
    (word(0), word(4), payload)
}

fn update(scanout: u32, rect: [u32; 4], pixels: &[u8]) -> Vec<u8> {
    let mut payload = words(&[scanout]);
    payload.extend(words(&rect));
    payload.extend_from_slice(pixels);
    payload
}

#[test]
fn petrel_answers_the_requests_a_back_end_waits_for() {
    let (mut kind, mut backend) = kind(64, 48);
    send(&mut backend, GET_PROTOCOL_FEATURES, &[]);
    send(&mut backend, GET_DISPLAY_INFO, &[]);
    send(&mut backend, GET_EDID, &words(&[0]));
    send(&mut backend, GET_EDID, &words(&[3]));
    send(&mut backend, DMABUF_UPDATE, &update(0, [0, 0, 1, 1], &[]));
    kind.channel_ready();

    assert_eq!(
        reply(&mut backend),
        (
            GET_PROTOCOL_FEATURES,
            REPLY_FLAG,
            1u64.to_le_bytes().to_vec()
        )
    );
    let (request, flags, info) = reply(&mut backend);
    assert_eq!(
        (request, flags, info.len()),
        (GET_DISPLAY_INFO, REPLY_FLAG, 24 + 16 * 24)
    );
    // Scanout 0: 0, 0, 64x48, enabled; scanout 1 disabled.
    assert_eq!(&info[24..44], &words(&[0, 0, 64, 48, 1])[..]);
    assert_eq!(&info[48 + 16..48 + 20], &words(&[0])[..]);
    let (request, _, edid) = reply(&mut backend);
    assert_eq!((request, edid.len()), (GET_EDID, 24 + 8 + 1024));
    assert_eq!(&edid[..4], &RESP_OK_EDID.to_le_bytes());
    assert_eq!(edid::preferred_mode(&edid[32..32 + 128]), (64, 48));
    let (_, _, bad) = reply(&mut backend);
    assert_eq!(&bad[..4], &RESP_ERR_INVALID_SCANOUT_ID.to_le_bytes());
    assert_eq!(reply(&mut backend), (DMABUF_UPDATE, REPLY_FLAG, Vec::new()));
    assert!(kind.channel.is_some());
}

#[test]
fn scanout_and_updates_make_the_picture() {
    let (mut kind, mut backend) = kind(64, 48);
    send(&mut backend, SCANOUT, &words(&[0, 2, 2]));
    // Row 0: red, green; then (0, 1) green. x8r8g8b8: B, G, R, X bytes (X ignored).
    let pixels = [0, 0, 0xff, 0, 0, 0xff, 0, 0];
    send(&mut backend, UPDATE, &update(0, [0, 0, 2, 1], &pixels));
    send(
        &mut backend,
        UPDATE,
        &update(0, [0, 1, 1, 1], &[0, 0xff, 0, 7]),
    );
    send(&mut backend, CURSOR_POS, &words(&[0, 5, 6]));
    kind.channel_ready();
    let frame = kind.screen.frame().unwrap();
    assert_eq!((frame.width, frame.height, frame.generation), (2, 2, 3));
    assert_eq!(
        frame.rgba,
        [0xff, 0, 0, 0xff, 0, 0xff, 0, 0xff, 0, 0xff, 0, 0xff, 0, 0, 0, 0xff]
    );
    let p = kind.screen.pointer();
    assert_eq!((p.x, p.y, p.visible), (5, 6, true));
    send(&mut backend, SCANOUT, &words(&[0, 0, 0]));
    kind.channel_ready();
    assert!(kind.screen.frame().is_none());
}

#[test]
fn bad_messages_are_ignored_or_discarded_and_the_channel_goes_on() {
    let (mut kind, mut backend) = kind(64, 48);
    send(&mut backend, SCANOUT, &words(&[0, 4, 4]));
    // Outside the screen, a wrong pixel count, another scanout, too short, unknown, a mode
    // too large, and an update larger than the screen (discarded unread).
    send(&mut backend, UPDATE, &update(0, [4, 3, 2, 2], &[0; 16]));
    send(&mut backend, UPDATE, &update(0, [0, 0, 2, 2], &[0; 12]));
    send(&mut backend, UPDATE, &update(5, [0, 0, 1, 1], &[0; 4]));
    send(&mut backend, SCANOUT, &words(&[0, 1]));
    send(&mut backend, 99, &[1, 2, 3]);
    send(&mut backend, SCANOUT, &words(&[0, 5000, 5000]));
    send(&mut backend, UPDATE, &update(0, [0, 0, 8, 8], &[0; 256]));
    send(&mut backend, CURSOR_UPDATE, &vec![0; MAX_SMALL_PAYLOAD + 1]);
    // A request waited for, discarded for its size, still gets its reply.
    send(&mut backend, GET_DISPLAY_INFO, &[0; MAX_SMALL_PAYLOAD + 1]);
    kind.channel_ready();
    kind.channel_ready();
    let (request, _, info) = reply(&mut backend);
    assert_eq!((request, info.len()), (GET_DISPLAY_INFO, 408));
    // The mode too large took the picture away: the guest no longer shows the old one.
    assert!(kind.screen.frame().is_none());
    assert!(kind.channel.is_some());
    // All but the other scanout's update count as not applied.
    assert_eq!(kind.ignored, 8);
    send(&mut backend, SCANOUT, &words(&[0, 4, 4]));
    // Still in step: a good update after all that lands.
    send(
        &mut backend,
        UPDATE,
        &update(0, [0, 0, 1, 1], &[1, 2, 3, 0]),
    );
    kind.channel_ready();
    assert_eq!(&kind.screen.frame().unwrap().rgba[..4], &[3, 2, 1, 0xff]);
}

#[test]
fn a_message_split_across_reads_is_put_together() {
    let (mut kind, mut backend) = kind(64, 48);
    let mut msg = words(&[SCANOUT, 0, 12]);
    msg.extend(words(&[0, 3, 2]));
    backend.write_all(&msg[..7]).unwrap();
    kind.channel_ready();
    assert!(kind.screen.frame().is_none());
    backend.write_all(&msg[7..15]).unwrap();
    kind.channel_ready();
    backend.write_all(&msg[15..]).unwrap();
    kind.channel_ready();
    assert_eq!(kind.screen.frame().unwrap().width, 3);
}

#[test]
fn a_closed_channel_is_retired_for_the_device_to_unwatch() {
    let (mut kind, backend) = kind(64, 48);
    let fd = kind.channel().unwrap();
    drop(backend);
    kind.channel_ready();
    assert!(kind.channel().is_none());
    let retired = kind.retired_channels();
    assert_eq!(retired.len(), 1);
    assert_eq!(retired[0].as_raw_fd(), fd);
    assert!(kind.retired_channels().is_empty());
}

#[test]
fn features_need_version_1_and_pass_only_gpu_and_ring_ones() {
    let protocol = crate::virtio::vhost_user::connection::PROTOCOL_FEATURES_BIT;
    let log_all = crate::virtio::vhost_user::connection::LOG_ALL_BIT;
    let offered = features::VERSION_1 | VIRTIO_GPU_F_EDID | VIRTIO_GPU_F_VIRGL | protocol | log_all;
    assert_eq!(
        offered_features(offered).unwrap(),
        features::VERSION_1 | VIRTIO_GPU_F_EDID | VIRTIO_GPU_F_VIRGL
    );
    assert!(offered_features(VIRTIO_GPU_F_EDID).is_err());
}

#[test]
fn the_config_space_has_one_scanout_and_the_back_ends_capsets() {
    assert_eq!(config_space(None), words(&[0, 0, 1, 0]));
    assert_eq!(
        config_space(Some(&words(&[9, 9, 0, 2]))),
        words(&[0, 0, 1, 2])
    );
    assert_eq!(config_space(Some(&[1, 2])), words(&[0, 0, 1, 0]));
}

#[test]
fn a_back_end_that_does_not_read_its_replies_loses_the_channel_and_holds_nothing() {
    let (mut kind, backend) = kind(64, 48);
    // Requests that want replies, sent until the socket is full, never read.
    let ask = words(&[GET_EDID, 0, 4, 0]);
    backend.set_nonblocking(true).unwrap();
    let mut sent = 0;
    while (&backend).write(&ask).is_ok_and(|n| n == ask.len()) {
        sent += 1;
    }
    assert!(sent > 10);
    let started = std::time::Instant::now();
    while kind.channel.is_some() {
        kind.channel_ready();
        assert!(started.elapsed() < Duration::from_secs(30), "still open");
    }
    assert!(kind.retired_channels().len() == 1);
}

#[test]
fn one_pass_reads_a_bounded_number_of_bytes() {
    let (mut kind, mut backend) = kind(4095, 4095);
    send(&mut backend, SCANOUT, &words(&[0, 4095, 4095]));
    kind.channel_ready();
    // A whole-screen update (64 MiB) comes in over several passes, then lands.
    let pixels = vec![0x40u8; 4095 * 4095 * 4];
    let payload = update(0, [0, 0, 4095, 4095], &pixels);
    let writer = std::thread::spawn(move || {
        send(&mut backend, UPDATE, &payload);
        backend
    });
    let mut passes = 0;
    while kind.screen.frame().unwrap().generation < 2 {
        kind.channel_ready();
        passes += 1;
        assert!(passes < 100_000, "the update never landed");
    }
    assert!(passes >= pixels.len() / BYTES_PER_PASS, "{passes} passes");
    drop(writer.join().unwrap());
    assert_eq!(
        &kind.screen.frame().unwrap().rgba[..4],
        &[0x40, 0x40, 0x40, 0xff]
    );
}

/// DMABUF_SCANOUT of `file` as an 8x4 XR24 buffer (stride 32) whose scanout is its 4x2 at
/// (2, 1).
fn dmabuf_scanout(backend: &UnixStream, file: &std::fs::File) {
    use vmm_sys_util::sock_ctrl_msg::ScmSocket;
    let payload = words(&[0, 2, 1, 4, 2, 8, 4, 32, 0, u32::from_le_bytes(*b"XR24")]);
    let mut msg = words(&[DMABUF_SCANOUT, 0, payload.len() as u32]);
    msg.extend(payload);
    backend.send_with_fd(&msg[..], file.as_raw_fd()).unwrap();
}

#[test]
fn a_dmabuf_scanout_is_read_on_each_update() {
    use std::os::unix::fs::FileExt;
    let (mut kind, mut backend) = kind(64, 48);
    let buffer = memory::sealed_memfd(c"petrel-test-dmabuf", 128).unwrap();
    // Every pixel of the buffer is (B, G, R, X) = (x, y, 0x80, 0).
    let pixels: Vec<u8> = (0..32u8).flat_map(|i| [i % 8, i / 8, 0x80, 0]).collect();
    buffer.write_all_at(&pixels, 0).unwrap();
    dmabuf_scanout(&backend, &buffer);
    kind.channel_ready();
    let frame = kind.screen.frame().unwrap();
    assert_eq!((frame.width, frame.height), (4, 2));
    assert!(
        frame.rgba.chunks(4).all(|p| p == [0, 0, 0, 0xff]),
        "black until updated"
    );

    // The back end flushed (0, 0)..(5, 2) of the buffer: its part in the scanout is
    // (2, 1)..(5, 2), the screen's (0, 0)..(3, 1).
    send(&mut backend, DMABUF_UPDATE, &words(&[0, 0, 0, 5, 2]));
    kind.channel_ready();
    assert_eq!(reply(&mut backend), (DMABUF_UPDATE, REPLY_FLAG, Vec::new()));
    let frame = kind.screen.frame().unwrap();
    let row0: Vec<u8> = [2u8, 3, 4]
        .iter()
        .flat_map(|&x| [0x80, 1, x, 0xff])
        .collect();
    assert_eq!(&frame.rgba[..12], &row0[..]);
    assert_eq!(&frame.rgba[12..16], &[0, 0, 0, 0xff]);
    assert_eq!(
        &frame.rgba[16..20],
        &[0, 0, 0, 0xff],
        "row 1 was not flushed"
    );

    // A later change of the buffer shows after the next update.
    buffer.write_all_at(&[9, 9, 9, 0], (2 * 8 + 2) * 4).unwrap();
    send(&mut backend, DMABUF_UPDATE, &words(&[0, 2, 1, 4, 2]));
    kind.channel_ready();
    reply(&mut backend);
    assert_eq!(&kind.screen.frame().unwrap().rgba[16..20], &[9, 9, 9, 0xff]);
    assert_eq!(kind.ignored, 0);
}

#[test]
fn a_dmabuf_petrel_cannot_read_safely_blanks_the_screen_and_updates_are_still_answered() {
    let (mut kind, mut backend) = kind(64, 48);
    send(&mut backend, SCANOUT, &words(&[0, 4, 4]));
    // A file that is not sealed: the back end could shrink it under petrel's mapping.
    let unsealed = tempfile::tempfile().unwrap();
    unsealed.set_len(128).unwrap();
    dmabuf_scanout(&backend, &unsealed);
    // Without a descriptor, and too short.
    send(
        &mut backend,
        DMABUF_SCANOUT,
        &words(&[0, 0, 0, 4, 2, 8, 4, 32, 0, 0x34325258]),
    );
    send(&mut backend, DMABUF_SCANOUT, &words(&[0, 0]));
    send(&mut backend, DMABUF_UPDATE, &words(&[0, 0, 0, 4, 2]));
    kind.channel_ready();
    assert_eq!(reply(&mut backend), (DMABUF_UPDATE, REPLY_FLAG, Vec::new()));
    assert!(kind.screen.frame().is_none());
    assert!(kind.dmabuf.is_none());
    assert_eq!(kind.ignored, 4);
    assert!(kind.channel.is_some());
}
