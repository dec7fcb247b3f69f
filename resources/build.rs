//! Builds the test guest (`guest/`, a `no_std` crate outside the workspace) for the
//! `x86_64-unknown-none` target and copies the resulting ELF to `$OUT_DIR/petrel-guest`, where
//! `src/lib.rs` embeds it.
//!
//! The guest is built by a nested `cargo` with its own `--target-dir` under `OUT_DIR`, so it
//! never waits on the lock the outer build holds on the workspace's target directory.

use std::env;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const GUEST_TARGET: &str = "x86_64-unknown-none";
const GUEST_BIN: &str = "petrel-guest";
const MISSING_TARGET: &str =
    "the x86_64-unknown-none target is missing: run `rustup target add x86_64-unknown-none`";

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let guest_dir = manifest_dir.join("guest");
    let linker_script = guest_dir.join("linker.ld");

    for path in [
        "build.rs",
        "guest/Cargo.toml",
        "guest/Cargo.lock",
        "guest/build.rs",
        "guest/linker.ld",
        "guest/src",
    ] {
        println!("cargo:rerun-if-changed={path}");
    }

    let rustc = env::var_os("RUSTC").unwrap_or_else(|| OsString::from("rustc"));
    if !target_installed(&rustc) {
        panic!("{MISSING_TARGET}");
    }

    let target_dir = out_dir.join("guest-target");
    // The guest's flags go in CARGO_ENCODED_RUSTFLAGS (separator 0x1f), which takes precedence
    // over every other source of flags; RUSTFLAGS (the host's flags, if any) must not leak in.
    let rustflags = [
        format!("-Clink-arg=-T{}", linker_script.display()),
        "-Crelocation-model=static".to_owned(),
    ]
    .join("\x1f");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let output = Command::new(cargo)
        .current_dir(&guest_dir)
        .args(["build", "--release", "--target", GUEST_TARGET])
        .arg("--target-dir")
        .arg(&target_dir)
        .arg("--manifest-path")
        .arg(guest_dir.join("Cargo.toml"))
        .env_remove("RUSTFLAGS")
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        // `cargo clippy` sets this for workspace members; the guest is compiled, not linted.
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .output()
        .expect("failed to run cargo to build the test guest");
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        eprintln!("{stderr}");
        if stderr.contains("target may not be installed")
            || stderr.contains("can't find crate for `core`")
        {
            panic!("{MISSING_TARGET}");
        }
        panic!(
            "building the test guest failed ({}); see the output above",
            output.status
        );
    }

    let built = target_dir
        .join(GUEST_TARGET)
        .join("release")
        .join(GUEST_BIN);
    copy(&built, &out_dir.join(GUEST_BIN));
}

/// Whether the sysroot `rustc` uses holds the standard library for the guest target.
fn target_installed(rustc: &OsString) -> bool {
    let Ok(output) = Command::new(rustc).args(["--print", "sysroot"]).output() else {
        // Let the guest build itself report what is wrong.
        return true;
    };
    let sysroot = String::from_utf8_lossy(&output.stdout);
    let sysroot = Path::new(sysroot.trim());
    !output.status.success() || sysroot.join("lib/rustlib").join(GUEST_TARGET).is_dir()
}

fn copy(from: &Path, to: &Path) {
    if let Err(e) = fs::copy(from, to) {
        panic!(
            "cannot copy the test guest from {} to {}: {e}",
            from.display(),
            to.display()
        );
    }
}
