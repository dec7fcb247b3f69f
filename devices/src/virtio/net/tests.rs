//! virtio-net's configuration, TAP setup, features and config space. TAP tests run in a
//! private network namespace each (see `testutil`); the data paths are in `rx_tests` and
//! `tx_tests`.

use virtio_bindings::virtio_net::*;

use super::device::{features_for, offloads_for};
use super::testutil::*;
use super::*;
use crate::virtio::{features, ids, VirtioDevice};

#[test]
fn mac_addresses_parse_and_print_in_colon_form() {
    let mac: MacAddr = "02:AB:cd:00:10:ff".parse().unwrap();
    assert_eq!(mac.bytes(), [0x02, 0xab, 0xcd, 0x00, 0x10, 0xff]);
    assert_eq!(mac.to_string(), "02:ab:cd:00:10:ff");
}

#[test]
fn malformed_multicast_and_zero_mac_strings_are_rejected() {
    for bad in [
        "",
        "02:00:00:00:00",
        "02:00:00:00:00:01:02",
        "02-00-00-00-00-01",
        "02:00:00:00:00:1",
        "02:00:00:00:00:0g",
        "+2:00:00:00:00:01",
        "02:00:00:00:00:001",
        " 02:00:00:00:00:01",
    ] {
        assert!(
            matches!(bad.parse::<MacAddr>(), Err(MacError::Malformed { .. })),
            "{bad:?} was accepted"
        );
    }
    for multicast in [
        "01:00:5e:00:00:01",
        "ff:ff:ff:ff:ff:ff",
        "33:33:00:00:00:01",
    ] {
        assert!(
            matches!(
                multicast.parse::<MacAddr>(),
                Err(MacError::Multicast { .. })
            ),
            "{multicast}"
        );
    }
    assert_eq!("00:00:00:00:00:00".parse::<MacAddr>(), Err(MacError::Zero));
}

#[test]
fn generated_macs_are_locally_administered_unicast_and_differ() {
    let a = MacAddr::random().unwrap();
    let b = MacAddr::random().unwrap();
    assert_eq!(a.bytes()[0] & 0b11, 0b10, "{a}");
    assert_ne!(a, b);
}

#[test]
fn config_json_round_trips_and_rejects_unknown_fields_and_bad_macs() {
    let json = r#"{"tap":"tap0","id":"net0","mac":"02:00:00:00:00:09"}"#;
    let config: NetConfig = serde_json::from_str(json).unwrap();
    assert_eq!(config.mac, Some("02:00:00:00:00:09".parse().unwrap()));
    assert_eq!(serde_json::to_string(&config).unwrap(), json);
    let no_mac: NetConfig = serde_json::from_str(r#"{"tap":"tap0","id":"net0"}"#).unwrap();
    assert_eq!(no_mac.mac, None);
    assert!(serde_json::from_str::<NetConfig>(r#"{"tap":"t","id":"n","mtu":1500}"#).is_err());
    let err =
        serde_json::from_str::<NetConfig>(r#"{"tap":"t","id":"n","mac":"01:00:00:00:00:01"}"#)
            .unwrap_err();
    assert!(err.to_string().contains("multicast"), "{err}");
}

#[test]
fn bad_tap_names_are_user_errors_before_the_host_is_touched() {
    for bad in [
        "",
        "sixteen-chars-xx",
        "tap/0",
        "tap 0",
        "tap:0",
        "tap%d",
        "..",
        "tä",
    ] {
        let err = Net::new(config(bad))
            .err()
            .unwrap_or_else(|| panic!("{bad:?} accepted"));
        assert!(
            matches!(
                err,
                NetError::Tap {
                    source: TapError::InvalidName { .. },
                    ..
                }
            ),
            "{bad:?}: {err}"
        );
        assert!(err.is_user_error());
        let msg = err.to_string();
        assert!(
            !msg.contains('\n') && msg.contains(&format!("{bad:?}")),
            "{msg}"
        );
    }
    assert!(tap::validate_name("fifteen-chars-x").is_ok());
}

#[test]
fn features_follow_the_tap_offloads() {
    let bit = |b: u32| 1u64 << b;
    let none = features_for(0);
    let base = features::COMMON
        | bit(VIRTIO_NET_F_MAC)
        | bit(VIRTIO_NET_F_STATUS)
        | bit(VIRTIO_NET_F_MRG_RXBUF)
        | bit(VIRTIO_NET_F_CSUM);
    assert_eq!(none, base);
    let csum_tso4 = features_for(libc::TUN_F_CSUM | libc::TUN_F_TSO4);
    assert_eq!(
        csum_tso4,
        base | bit(VIRTIO_NET_F_GUEST_CSUM)
            | bit(VIRTIO_NET_F_GUEST_TSO4)
            | bit(VIRTIO_NET_F_HOST_TSO4)
    );
    // Offloads go to the TAP only with checksum offload, as the kernel requires.
    assert_eq!(offloads_for(bit(VIRTIO_NET_F_GUEST_TSO4)), 0);
    assert_eq!(
        offloads_for(bit(VIRTIO_NET_F_GUEST_CSUM) | bit(VIRTIO_NET_F_GUEST_UFO)),
        libc::TUN_F_CSUM | libc::TUN_F_UFO
    );
}

#[test]
fn tap_open_reports_the_offloads_this_kernel_accepts() {
    if !require_root("tap_open_reports_the_offloads_this_kernel_accepts") {
        return;
    }
    in_netns(|| {
        let tap = Tap::open("ptprobe").unwrap();
        let offloads = tap.supported_offloads();
        eprintln!(
            "TUN_F offloads accepted here: {offloads:#x} (CSUM 0x1, TSO4 0x2, TSO6 0x4, UFO 0x10)"
        );
        assert_eq!(
            offloads & (libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6),
            0x7
        );
        let net = Net::new(config("ptprobe2")).unwrap();
        let ufo = offloads & libc::TUN_F_UFO != 0;
        assert_eq!(
            net.avail_features() & (1 << VIRTIO_NET_F_GUEST_UFO) != 0,
            ufo
        );
        assert_eq!(
            net.avail_features() & (1 << VIRTIO_NET_F_HOST_UFO) != 0,
            ufo
        );
    });
}

#[test]
fn opening_a_tap_without_cap_net_admin_names_the_missing_capability() {
    if !require_root("opening_a_tap_without_cap_net_admin_names_the_missing_capability") {
        return;
    }
    in_netns(|| {
        drop_cap_net_admin();
        let err = Net::new(config("ptnoperm"))
            .err()
            .expect("created a TAP without CAP_NET_ADMIN");
        assert!(
            matches!(
                err,
                NetError::Tap {
                    source: TapError::PermissionDenied { .. },
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.is_user_error());
        let msg = err.to_string();
        assert!(
            msg.contains("CAP_NET_ADMIN") && msg.contains("ptnoperm") && !msg.contains('\n'),
            "{msg}"
        );
    });
}

/// Clears CAP_NET_ADMIN from this thread's effective capabilities (capabilities are per
/// thread; the thread ends with the test).
fn drop_cap_net_admin() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    const CAP_NET_ADMIN: u32 = 12;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget writes one header and two data structs, both live and of the layout the
    // kernel expects for version 3.
    let ret = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    assert_eq!(ret, 0, "capget: {}", std::io::Error::last_os_error());
    data[0].effective &= !(1 << CAP_NET_ADMIN);
    // SAFETY: as above; capset only reads them.
    let ret = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    assert_eq!(ret, 0, "capset: {}", std::io::Error::last_os_error());
}

#[test]
fn config_space_holds_the_mac_link_up_and_one_queue_pair() {
    if !require_root("config_space_holds_the_mac_link_up_and_one_queue_pair") {
        return;
    }
    in_netns(|| {
        let net = Net::new(config("ptcfg")).unwrap();
        assert_eq!(net.device_type(), ids::NET);
        assert_eq!(net.queue_max_sizes(), &[256, 256]);
        let mut space = [0xaa; 12];
        net.read_config(0, &mut space);
        assert_eq!(space, [0x02, 0, 0, 0, 0, 0x01, 1, 0, 1, 0, 0, 0]);
        let mut status = [0; 2];
        net.read_config(6, &mut status);
        assert_eq!(u16::from_le_bytes(status), VIRTIO_NET_S_LINK_UP as u16);
        let mut past = [0xaa; 4];
        net.read_config(u64::MAX, &mut past);
        assert_eq!(past, [0; 4]);
        let offered = net.avail_features();
        for f in [
            VIRTIO_NET_F_MAC,
            VIRTIO_NET_F_STATUS,
            VIRTIO_NET_F_MRG_RXBUF,
            VIRTIO_NET_F_CSUM,
            VIRTIO_NET_F_GUEST_CSUM,
        ] {
            assert_ne!(offered & (1 << f), 0, "feature {f} not offered");
        }
        assert_eq!(offered & features::COMMON, features::COMMON);
        assert_eq!(offered & (1 << VIRTIO_NET_F_CTRL_VQ), 0);
    });
}

#[test]
fn a_generated_mac_is_kept_in_the_config_and_the_saved_state() {
    if !require_root("a_generated_mac_is_kept_in_the_config_and_the_saved_state") {
        return;
    }
    in_netns(|| {
        let net = Net::new(NetConfig {
            mac: None,
            rx_rate_limiter: None,
            tx_rate_limiter: None,
            ..config("ptgen")
        })
        .unwrap();
        let mac = net.config().mac.expect("a MAC was generated");
        assert_eq!(mac.bytes()[0] & 0b11, 0b10);
        let mut space = [0; 6];
        net.read_config(0, &mut space);
        assert_eq!(space, mac.bytes());
        assert_eq!(net.save().config.mac, Some(mac));
    });
}
