//! `petrel snapshot`: looking at and flattening snapshot files, without a VM.

use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;

use crate::persist::MachineState;
use snapshot::hex;

/// `petrel snapshot` commands.
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Flatten a memory file and the chain of layers under it into one full memory file.
    Merge {
        /// The memory file: a Diff layer (its parents are found through its header) or a
        /// full one.
        top: PathBuf,
        /// The full memory file to write.
        out: PathBuf,
    },
    /// Show a state file's machine, or a memory file's chain with sizes and content hashes.
    Info {
        /// A state file or a memory file.
        path: PathBuf,
        /// Re-read every memory file and check its content hash.
        #[arg(long)]
        verify: bool,
    },
}

/// Runs a `petrel snapshot` command: 0 on success, 2 when a file is missing or invalid.
pub fn run(command: &SnapshotCommand) -> ExitCode {
    let result = match command {
        SnapshotCommand::Merge { top, out } => merge(top, out),
        SnapshotCommand::Info { path, verify } => info(path, *verify),
    };
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("petrel: error: {e}");
            ExitCode::from(2)
        }
    }
}

fn merge(top: &Path, out: &Path) -> Result<String, snapshot::SnapshotError> {
    let files = snapshot::resolve_chain(top)?.files().len();
    let info = snapshot::merge(top, out)?;
    Ok(format!(
        "merged {files} memory files into {}: {} pages, {} bytes on disk, content hash {}\n",
        out.display(),
        info.pages,
        info.bytes_on_disk,
        hex(&info.content_hash)
    ))
}

/// Whether `path` starts like a state file (otherwise it is taken for a memory file).
fn is_state_file(path: &Path) -> Result<bool, snapshot::SnapshotError> {
    let mut magic = [0u8; 8];
    let Ok(mut file) = std::fs::File::open(path) else {
        // The memory file reader says what is wrong with it.
        return Ok(false);
    };
    Ok(file.read_exact(&mut magic).is_ok() && magic == snapshot::STATE_MAGIC)
}

fn info(path: &Path, verify: bool) -> Result<String, snapshot::SnapshotError> {
    let mut text = String::new();
    let top = if is_state_file(path)? {
        let state: MachineState = snapshot::read_state(path)?;
        let m = &state.config.machine;
        let _ = writeln!(
            text,
            "state file {} (format version {}, checksum ok)",
            path.display(),
            snapshot::STATE_FORMAT_VERSION
        );
        let _ = writeln!(
            text,
            "machine: {} vCPUs, {} MiB of RAM, dirty page tracking {}",
            m.vcpus,
            m.memory.0 >> 20,
            if m.track_dirty_pages { "on" } else { "off" }
        );
        for n in &state.config.numa {
            let mut host = String::new();
            if let Some(h) = n.host_node {
                let _ = write!(host, ", bound to host node {h}");
            }
            if n.hugepages {
                host.push_str(", huge pages");
            }
            let cpus = match String::from(n.cpus.clone()) {
                list if list.is_empty() => "no vCPUs".to_string(),
                list => format!("vCPUs {list}"),
            };
            let _ = writeln!(
                text,
                "numa node {}: {cpus}, {} MiB{host}",
                n.node,
                n.memory.0 >> 20
            );
        }
        for r in &state.layout.ram {
            let _ = writeln!(
                text,
                "ram {:#x}-{:#x} node {}",
                r.start,
                r.end() - 1,
                r.node
            );
        }
        for d in &state.devices.virtio {
            let kind = d.device.kind();
            let _ = writeln!(
                text,
                "device {} ({kind}) at {:#x}, irq {}",
                d.id, d.base, d.irq
            );
        }
        let mem = state.memory.resolve(path);
        let _ = writeln!(
            text,
            "memory: {} ({}, content hash {})",
            mem.display(),
            state.memory.kind,
            state.memory.content_hash
        );
        mem
    } else {
        path.to_path_buf()
    };
    let chain = snapshot::resolve_chain(&top)?;
    let files = chain.files();
    let _ = writeln!(
        text,
        "memory chain of {} file(s), base first, {} MiB of guest RAM:",
        files.len(),
        chain.guest_size() >> 20
    );
    text.push_str(&snapshot::format_chain(&files));
    if verify {
        for f in &files {
            snapshot::verify(&f.path)?;
        }
        let _ = writeln!(text, "every content hash verified");
    }
    Ok(text)
}
