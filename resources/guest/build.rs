//! Relinks the guest when `linker.ld` changes: it reaches the linker through
//! `CARGO_ENCODED_RUSTFLAGS` (set by `../build.rs`), which cargo does not track by content.

fn main() {
    println!("cargo:rerun-if-changed=linker.ld");
}
