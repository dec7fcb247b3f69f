//! The virtio device flags (`--disk`, `--net`, `--console`) and the checks that span
//! devices: ids are unique, and no two devices share a backend.

use std::collections::HashSet;
use std::path::PathBuf;

use devices::rate_limiter::RateLimitConfig;
use devices::virtio::block::BlockConfig;
use devices::virtio::console::{ConsoleConfig, ConsoleOutput};
use devices::virtio::gpu::{GpuBackend, GpuConfig, DEFAULT_SIZE};
use devices::virtio::input::{InputConfig, InputKind};
use devices::virtio::net::{MacAddr, NetConfig};
use devices::virtio::vhost_user::{
    FsTag, VhostUserBlkConfig, VhostUserFsConfig, VhostUserNetConfig,
};
use devices::virtio::vsock::VsockConfig;

use super::{ByteSize, ConfigError, Options, VmConfig};

/// The keys of a `rate=` group.
const RATE_KEYS: [&str; 4] = ["bw", "ops", "bw_burst", "ops_burst"];

fn rate_limit(o: &mut Options) -> Result<Option<RateLimitConfig>, ConfigError> {
    match o.take_group(&RATE_KEYS) {
        None => Ok(None),
        Some(spec) => RateLimitConfig::parse(&spec)
            .map(Some)
            .map_err(|e| o.invalid("rate", &spec, &e.to_string())),
    }
}

/// `--disk path=FILE[,id=ID][,readonly=on][,serial=STR][,rate=...]`.
pub fn parse_disk(text: &str, index: usize) -> Result<BlockConfig, ConfigError> {
    let mut o = Options::parse("disk", text)?;
    let config = BlockConfig {
        path: o.require("path")?.into(),
        id: o.take("id").unwrap_or_else(|| format!("disk{index}")),
        readonly: o.take_bool("readonly")?,
        serial: o.take("serial"),
        rate_limiter: rate_limit(&mut o)?,
    };
    o.finish()?;
    Ok(config)
}

/// `--net tap=NAME[,id=ID][,mac=MAC][,rate=...]`; the rate applies to each direction.
pub fn parse_net(text: &str, index: usize) -> Result<NetConfig, ConfigError> {
    let mut o = Options::parse("net", text)?;
    let tap = o.require("tap")?;
    let id = o.take("id").unwrap_or_else(|| format!("net{index}"));
    let mac = o.take_parsed("mac", |m| m.parse::<MacAddr>())?;
    let rate = rate_limit(&mut o)?;
    o.finish()?;
    Ok(NetConfig {
        tap,
        id,
        mac,
        rx_rate_limiter: rate,
        tx_rate_limiter: rate,
    })
}

/// `--console [id=ID,]output=stdout|file:PATH|pty|socket:PATH|none`.
pub fn parse_console(text: &str, index: usize) -> Result<ConsoleConfig, ConfigError> {
    let mut o = Options::parse("console", text)?;
    let id = o.take("id").unwrap_or_else(|| format!("console{index}"));
    let output = o
        .take_parsed("output", |s| s.parse::<ConsoleOutput>())?
        .unwrap_or(ConsoleOutput::Stdout);
    o.finish()?;
    Ok(ConsoleConfig { id, output })
}

/// `--vhost-user-blk socket=PATH[,id=ID]`.
pub fn parse_vhost_user_blk(text: &str, index: usize) -> Result<VhostUserBlkConfig, ConfigError> {
    let mut o = Options::parse("vhost-user-blk", text)?;
    let config = VhostUserBlkConfig {
        socket: o.require("socket")?.into(),
        id: o.take("id").unwrap_or_else(|| format!("vublk{index}")),
    };
    o.finish()?;
    Ok(config)
}

/// `--vhost-user-net socket=PATH[,id=ID][,mac=MAC]`.
pub fn parse_vhost_user_net(text: &str, index: usize) -> Result<VhostUserNetConfig, ConfigError> {
    let mut o = Options::parse("vhost-user-net", text)?;
    let config = VhostUserNetConfig {
        socket: o.require("socket")?.into(),
        id: o.take("id").unwrap_or_else(|| format!("vunet{index}")),
        mac: o.take_parsed("mac", |m| m.parse::<MacAddr>())?,
    };
    o.finish()?;
    Ok(config)
}

/// `--vhost-user-fs socket=PATH,tag=TAG[,id=ID]`.
pub fn parse_vhost_user_fs(text: &str, index: usize) -> Result<VhostUserFsConfig, ConfigError> {
    let mut o = Options::parse("vhost-user-fs", text)?;
    let socket = o.require("socket")?.into();
    let tag = o.require("tag")?;
    let tag = tag
        .parse::<FsTag>()
        .map_err(|e| o.invalid("tag", &tag, &e.to_string()))?;
    let id = o.take("id").unwrap_or_else(|| format!("vufs{index}"));
    o.finish()?;
    Ok(VhostUserFsConfig { id, socket, tag })
}

/// `--vsock cid=N,uds=PATH[,id=ID]`.
pub fn parse_vsock(text: &str) -> Result<VsockConfig, ConfigError> {
    let mut o = Options::parse("vsock", text)?;
    let guest_cid = o.take_parsed("cid", |s| s.parse::<u64>())?;
    let guest_cid = guest_cid.ok_or_else(|| o.invalid("cid", "", "cid=N is required"))?;
    let uds_path = o.require("uds")?.into();
    let id = o
        .take("id")
        .unwrap_or_else(devices::virtio::vsock::default_id);
    o.finish()?;
    Ok(VsockConfig {
        id,
        guest_cid,
        uds_path,
    })
}

/// `--input kind=keyboard|tablet[,id=ID]`.
pub fn parse_input(text: &str, index: usize) -> Result<InputConfig, ConfigError> {
    let mut o = Options::parse("input", text)?;
    let kind = o.require("kind")?;
    let kind = kind
        .parse::<InputKind>()
        .map_err(|e| o.invalid("kind", &kind, &e))?;
    let id = o.take("id").unwrap_or_else(|| format!("input{index}"));
    o.finish()?;
    Ok(InputConfig { id, kind })
}

/// `--gpu [width=W,height=H][,max_memory=SIZE][,id=ID][,backend=builtin|vhost-user][,socket=PATH]`
/// (1280x800, 256 MiB and the built-in GPU when left out; `socket=` only, and always, with
/// `backend=vhost-user`).
pub fn parse_gpu(text: &str) -> Result<GpuConfig, ConfigError> {
    let defaults = GpuConfig::default();
    if text.trim().is_empty() {
        return Ok(defaults);
    }
    let mut o = Options::parse("gpu", text)?;
    let side = |s: &str| s.parse::<u32>().map_err(|e| e.to_string());
    let config = GpuConfig {
        id: o.take("id").unwrap_or(defaults.id),
        width: o.take_parsed("width", side)?.unwrap_or(DEFAULT_SIZE.0),
        height: o.take_parsed("height", side)?.unwrap_or(DEFAULT_SIZE.1),
        max_memory: o
            .take_parsed("max_memory", |s| s.parse::<ByteSize>())?
            .map_or(defaults.max_memory, |b| b.0),
        backend: o
            .take_parsed("backend", |s| s.parse::<GpuBackend>())?
            .unwrap_or_default(),
        socket: o.take("socket").map(PathBuf::from),
    };
    o.finish()?;
    config.validate().map_err(|e| ConfigError::Option {
        flag: "gpu",
        reason: e.to_string(),
    })?;
    Ok(config)
}

/// Whether `id` is a usable device id: 1 to 64 letters, digits, `-` or `_`.
fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Checks what spans devices: unique, well-formed ids; no disk image, TAP or console
/// socket used twice; valid rate limits.
pub fn validate(config: &VmConfig) -> Result<(), ConfigError> {
    let conflict = |reason: String| ConfigError::Conflict(reason);
    let ids = config
        .disks
        .iter()
        .map(|d| ("disk", &d.id))
        .chain(config.nets.iter().map(|n| ("net", &n.id)))
        .chain(config.consoles.iter().map(|c| ("console", &c.id)))
        .chain(config.vsock.iter().map(|v| ("vsock", &v.id)))
        .chain(config.inputs.iter().map(|i| ("input", &i.id)))
        .chain(config.vhost_user_devices().map(|(kind, id, _)| (kind, id)));
    let mut seen = HashSet::new();
    for (kind, id) in ids {
        if !valid_id(id) {
            return Err(ConfigError::Option {
                flag: kind,
                reason: format!("invalid id {id:?}: use 1 to 64 letters, digits, - or _"),
            });
        }
        if !seen.insert(id.as_str()) {
            return Err(conflict(format!("device id {id:?} is used twice")));
        }
    }
    let mut paths = HashSet::new();
    for d in &config.disks {
        if !paths.insert(d.path.clone()) {
            return Err(conflict(format!(
                "disk image {} is used twice",
                d.path.display()
            )));
        }
        if let Some(r) = &d.rate_limiter {
            r.validate()
                .map_err(|e| conflict(format!("disk {}: rate limit: {e}", d.id)))?;
        }
    }
    let mut vhost_sockets = HashSet::new();
    for (_, _, socket) in config.vhost_user_devices() {
        if !vhost_sockets.insert(socket) {
            return Err(conflict(format!(
                "vhost-user socket {} is used twice",
                socket.display()
            )));
        }
    }
    let mut taps = HashSet::new();
    for n in &config.nets {
        if !taps.insert(n.tap.as_str()) {
            return Err(conflict(format!("TAP {} is used twice", n.tap)));
        }
        for r in [&n.rx_rate_limiter, &n.tx_rate_limiter]
            .into_iter()
            .flatten()
        {
            r.validate()
                .map_err(|e| conflict(format!("net {}: rate limit: {e}", n.id)))?;
        }
    }
    let mut sockets = HashSet::new();
    for c in &config.consoles {
        if let ConsoleOutput::Socket(path) = &c.output {
            if !sockets.insert(path.clone()) {
                return Err(conflict(format!(
                    "console socket {} is used twice",
                    path.display()
                )));
            }
        }
    }
    if let Some(v) = &config.vsock {
        v.validate().map_err(|e| ConfigError::Option {
            flag: "vsock",
            reason: e.to_string(),
        })?;
        if sockets.contains(&v.uds_path) {
            return Err(conflict(format!(
                "vsock socket {} is also a console socket",
                v.uds_path.display()
            )));
        }
    }
    if let Some(gpu) = &config.gpu {
        if !valid_id(&gpu.id) {
            return Err(ConfigError::Option {
                flag: "gpu",
                reason: format!(
                    "invalid id {:?}: use 1 to 64 letters, digits, - or _",
                    gpu.id
                ),
            });
        }
        // A vhost-user GPU with its socket is among the vhost-user devices above.
        let counted = gpu.backend == GpuBackend::VhostUser && gpu.socket.is_some();
        if !counted && !seen.insert(gpu.id.as_str()) {
            return Err(conflict(format!("device id {:?} is used twice", gpu.id)));
        }
        gpu.validate().map_err(|e| ConfigError::Option {
            flag: "gpu",
            reason: e.to_string(),
        })?;
    }
    validate_root(config)
}

/// The root disk exists and is the first disk, so the guest sees it as `/dev/vda`.
fn validate_root(config: &VmConfig) -> Result<(), ConfigError> {
    let Some(root) = &config.boot.root else {
        return Ok(());
    };
    match config.disks.iter().position(|d| d.id == root.disk) {
        Some(0) => Ok(()),
        Some(_) => Err(ConfigError::Conflict(format!(
            "root disk {:?} must be the first disk",
            root.disk
        ))),
        None => Err(ConfigError::Conflict(format!(
            "root disk {:?} is not among the disks",
            root.disk
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_flags_fill_a_block_config() {
        let d = parse_disk("path=/img,readonly=on,serial=abc,rate=bw=1M,ops=10", 3).unwrap();
        assert_eq!(d.path, std::path::PathBuf::from("/img"));
        assert_eq!(d.id, "disk3");
        assert!(d.readonly);
        assert_eq!(d.serial.as_deref(), Some("abc"));
        let r = d.rate_limiter.unwrap();
        assert_eq!(r.bandwidth.unwrap().size, 1 << 20);
        assert_eq!(r.ops.unwrap().size, 10);
    }

    #[test]
    fn bad_device_flags_are_refused() {
        assert!(parse_disk("readonly=on", 0).is_err());
        assert!(parse_disk("path=/a,readonly=yes", 0).is_err());
        assert!(parse_disk("path=/a,cache=none", 0).is_err());
        assert!(parse_disk("path=/a,rate=bw=fast", 0).is_err());
        assert!(parse_net("mac=02:00:00:00:00:01", 0).is_err());
        assert!(parse_net("tap=t0,mac=02:00:00:00:00", 0).is_err());
        assert!(parse_net("tap=t0,mac=zz:00:00:00:00:01", 0).is_err());
        assert!(parse_console("output=tty", 0).is_err());
        assert!(parse_console("output=socket:", 0).is_err());
        assert!(parse_vsock("uds=/v").is_err());
        assert!(parse_vsock("cid=3").is_err());
        assert!(parse_vsock("cid=x,uds=/v").is_err());
        assert!(parse_vsock("cid=3,uds=/v,port=1").is_err());
        assert!(parse_input("", 0).is_err());
        assert!(parse_input("id=k", 0).is_err());
        assert!(parse_input("kind=mouse", 0).is_err());
        assert!(parse_input("kind=keyboard,repeat=on", 0).is_err());
    }

    #[test]
    fn vsock_flag_fills_the_config_and_checks_the_cid() {
        let v = parse_vsock("cid=3,uds=/run/v.sock").unwrap();
        assert_eq!((v.id.as_str(), v.guest_cid), ("vsock0", 3));
        assert_eq!(v.uds_path, std::path::PathBuf::from("/run/v.sock"));
        let mut c = VmConfig {
            vsock: Some(parse_vsock("cid=52,uds=/v,id=vs").unwrap()),
            ..VmConfig::default()
        };
        assert_eq!(validate(&c), Ok(()));
        for bad in [
            "cid=2,uds=/v",
            "cid=4294967295,uds=/v",
            "cid=3,uds=/v,id=a b",
        ] {
            c.vsock = Some(parse_vsock(bad).unwrap());
            assert!(validate(&c).is_err(), "{bad}");
        }
        c.vsock = Some(parse_vsock("cid=3,uds=/s").unwrap());
        c.consoles
            .push(parse_console("output=socket:/s", 0).unwrap());
        assert!(matches!(validate(&c), Err(ConfigError::Conflict(_))));
    }

    #[test]
    fn input_flags_fill_an_input_config() {
        let k = parse_input("kind=keyboard", 2).unwrap();
        assert_eq!((k.id.as_str(), k.kind), ("input2", InputKind::Keyboard));
        let t = parse_input("kind=tablet,id=pointer", 0).unwrap();
        assert_eq!((t.id.as_str(), t.kind), ("pointer", InputKind::Tablet));
        let mut c = VmConfig::default();
        c.inputs.push(k);
        c.inputs
            .push(parse_input("kind=tablet,id=input2", 1).unwrap());
        assert!(matches!(validate(&c), Err(ConfigError::Conflict(_))));
        // A config file names them the same way.
        let file: VmConfig =
            serde_json::from_str(r#"{"inputs": [{"id": "k", "kind": "keyboard"}]}"#).unwrap();
        assert_eq!(file.inputs[0].kind, InputKind::Keyboard);
        let json = serde_json::to_value(&file).unwrap();
        assert_eq!(json["inputs"][0]["kind"], "keyboard");
        assert!(serde_json::to_value(VmConfig::default()).unwrap()["inputs"].is_null());
        for bad in [
            r#"{"inputs": [{"id": "k", "kind": "mouse"}]}"#,
            r#"{"inputs": [{"id": "k"}]}"#,
            r#"{"inputs": [{"id": "k", "kind": "tablet", "size": 1}]}"#,
        ] {
            assert!(serde_json::from_str::<VmConfig>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn gpu_flag_fills_a_gpu_config_with_defaults_and_limits() {
        let g = parse_gpu("width=64,height=48,max_memory=16M,id=screen").unwrap();
        assert_eq!((g.width, g.height, g.max_memory), (64, 48, 16 << 20));
        assert_eq!(g.id, "screen");
        let d = parse_gpu("").unwrap();
        assert_eq!((d.width, d.height, d.max_memory), (1280, 800, 256 << 20));
        for bad in [
            "width=15",
            "height=4096",
            "width=-1",
            "width=abc",
            "max_memory=1K",
            "max_memory=lots",
            "depth=32",
            "width=64,width=64",
        ] {
            assert!(parse_gpu(bad).is_err(), "{bad}");
        }
        let mut c = VmConfig::default();
        c.disks.push(parse_disk("path=/a,id=gpu0", 0).unwrap());
        c.gpu = Some(parse_gpu("id=gpu0").unwrap());
        assert!(matches!(validate(&c), Err(ConfigError::Conflict(_))));
        c.gpu.as_mut().unwrap().width = 9000;
        c.disks.clear();
        assert!(validate(&c).is_err());
    }

    #[test]
    fn gpu_backend_vhost_user_needs_a_socket_shares_memory_and_counts_as_vhost_user() {
        let g = parse_gpu("backend=vhost-user,socket=/run/gpu.sock,width=64,height=48").unwrap();
        assert_eq!(g.backend, GpuBackend::VhostUser);
        assert_eq!(
            g.socket.as_deref(),
            Some(std::path::Path::new("/run/gpu.sock"))
        );
        assert_eq!(
            parse_gpu("backend=builtin").unwrap().backend,
            GpuBackend::Builtin
        );
        for (bad, why) in [
            ("backend=vhost-user", "socket"),
            ("socket=/s", "socket"),
            ("backend=virgl,socket=/s", "backend"),
        ] {
            let e = parse_gpu(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let mut c = VmConfig {
            gpu: Some(g),
            ..VmConfig::default()
        };
        validate(&c).unwrap();
        assert!(c.needs_shared_memory());
        let kinds: Vec<_> = c
            .vhost_user_devices()
            .map(|(k, id, _)| (k, id.clone()))
            .collect();
        assert_eq!(kinds, [("vhost-user-gpu", "gpu0".to_string())]);
        // Its socket and id are shared with the other vhost-user devices.
        c.vhost_user_blks
            .push(parse_vhost_user_blk("socket=/run/gpu.sock", 0).unwrap());
        assert!(matches!(validate(&c), Err(ConfigError::Conflict(_))));
        c.vhost_user_blks[0] = parse_vhost_user_blk("socket=/run/b.sock,id=gpu0", 0).unwrap();
        assert!(matches!(validate(&c), Err(ConfigError::Conflict(_))));
        // The built-in GPU needs no shared memory.
        let builtin = VmConfig {
            gpu: Some(parse_gpu("").unwrap()),
            ..VmConfig::default()
        };
        assert!(!builtin.needs_shared_memory());
        // In a config file.
        let json = r#"{"gpu":{"backend":"vhost-user","socket":"/g.sock"}}"#;
        let c: VmConfig = serde_json::from_str(json).unwrap();
        assert_eq!(c.gpu.unwrap().backend, GpuBackend::VhostUser);
        let c: VmConfig = serde_json::from_str(r#"{"gpu":{"backend":"vhost-user"}}"#).unwrap();
        assert!(validate(&c).is_err());
    }

    #[test]
    fn vhost_user_blk_flag_fills_the_config_and_makes_memory_shared() {
        let v = parse_vhost_user_blk("socket=/run/vu.sock", 0).unwrap();
        assert_eq!(
            (v.id.as_str(), v.socket.to_str()),
            ("vublk0", Some("/run/vu.sock"))
        );
        let v = parse_vhost_user_blk("socket=/s,id=vu", 1).unwrap();
        assert_eq!(v.id, "vu");
        for bad in ["", "id=vu", "socket=/s,path=/x", "socket=/s,socket=/t"] {
            assert!(parse_vhost_user_blk(bad, 0).is_err(), "{bad}");
        }
        let mut c = VmConfig::default();
        assert!(!c.needs_shared_memory());
        c.vhost_user_blks.push(v.clone());
        assert!(c.needs_shared_memory());
        assert_eq!(validate(&c), Ok(()));
        c.vhost_user_blks
            .push(parse_vhost_user_blk("socket=/s", 1).unwrap());
        assert!(matches!(validate(&c), Err(ConfigError::Conflict(_))));
        c.vhost_user_blks[1].socket = "/t".into();
        c.disks.push(parse_disk("path=/a,id=vu", 0).unwrap());
        assert!(matches!(validate(&c), Err(ConfigError::Conflict(_))));
    }

    #[test]
    fn vhost_user_net_flag_takes_a_mac_and_shares_sockets_and_ids_with_blk() {
        let v = parse_vhost_user_net("socket=/n,mac=02:00:00:00:00:09", 0).unwrap();
        assert_eq!(v.id, "vunet0");
        assert_eq!(v.mac.map(|m| m.bytes()), Some([2, 0, 0, 0, 0, 9]));
        assert_eq!(parse_vhost_user_net("socket=/n,id=x", 1).unwrap().mac, None);
        for bad in [
            "",
            "mac=02:00:00:00:00:09",
            "socket=/n,mac=01:00:00:00:00:00",
        ] {
            assert!(parse_vhost_user_net(bad, 0).is_err(), "{bad}");
        }
        let mut c = VmConfig::default();
        c.vhost_user_nets.push(v.clone());
        assert!(c.needs_shared_memory());
        assert_eq!(validate(&c), Ok(()));
        c.vhost_user_blks
            .push(parse_vhost_user_blk("socket=/n", 0).unwrap());
        assert!(matches!(validate(&c), Err(ConfigError::Conflict(_))));
        c.vhost_user_blks[0].socket = "/b".into();
        c.vhost_user_blks[0].id = "vunet0".into();
        assert!(matches!(validate(&c), Err(ConfigError::Conflict(_))));
    }

    #[test]
    fn vhost_user_fs_flag_needs_a_valid_tag_and_shares_sockets_and_ids_with_the_others() {
        let v = parse_vhost_user_fs("socket=/f,tag=myfs", 0).unwrap();
        assert_eq!((v.id.as_str(), v.tag.as_str()), ("vufs0", "myfs"));
        assert_eq!(
            parse_vhost_user_fs("tag=t,socket=/f,id=x", 1).unwrap().id,
            "x"
        );
        let long = format!("socket=/f,tag={}", "t".repeat(37));
        for bad in [
            "",
            "socket=/f",
            "tag=t",
            "socket=/f,tag=",
            &long,
            "socket=/f,tag=t,mac=x",
        ] {
            assert!(parse_vhost_user_fs(bad, 0).is_err(), "{bad}");
        }
        let e = parse_vhost_user_fs(&long, 0).unwrap_err().to_string();
        assert!(
            e.contains("--vhost-user-fs") && e.contains("37 bytes"),
            "{e}"
        );
        let mut c = VmConfig::default();
        c.vhost_user_fs.push(v);
        assert!(c.needs_shared_memory());
        assert_eq!(validate(&c), Ok(()));
        c.vhost_user_nets
            .push(parse_vhost_user_net("socket=/f", 0).unwrap());
        assert!(matches!(validate(&c), Err(ConfigError::Conflict(_))));
        c.vhost_user_nets[0].socket = "/n".into();
        c.vhost_user_nets[0].id = "vufs0".into();
        assert!(matches!(validate(&c), Err(ConfigError::Conflict(_))));
    }

    #[test]
    fn duplicate_ids_and_shared_backends_conflict() {
        let mut c = VmConfig::default();
        c.disks.push(parse_disk("path=/a,id=x", 0).unwrap());
        c.nets.push(parse_net("tap=t0,id=x", 0).unwrap());
        assert!(matches!(validate(&c), Err(ConfigError::Conflict(_))));
        c.nets[0].id = "n".into();
        assert_eq!(validate(&c), Ok(()));
        c.disks.push(parse_disk("path=/a", 1).unwrap());
        assert!(matches!(validate(&c), Err(ConfigError::Conflict(_))));
        c.disks.pop();
        c.nets.push(parse_net("tap=t0", 1).unwrap());
        assert!(matches!(validate(&c), Err(ConfigError::Conflict(_))));
        c.nets.pop();
        c.consoles
            .push(parse_console("id=bad id,output=none", 0).unwrap());
        assert!(validate(&c).is_err());
    }
}
