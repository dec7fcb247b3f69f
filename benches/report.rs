//! What every benchmark does with its results, shared by the crates' benches (included with
//! `#[path]`): JSON lines to the file `PETREL_BENCH_JSON` names, else to stdout.

use std::io::Write;

/// Where the JSON lines go: the file named by `PETREL_BENCH_JSON`, else stdout after the
/// table.
pub fn emit_json(lines: &[serde_json::Value]) {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    match std::env::var_os("PETREL_BENCH_JSON") {
        Some(path) => {
            let result = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .and_then(|mut f| f.write_all(text.as_bytes()));
            match result {
                Ok(()) => println!("JSON lines appended to {}", path.to_string_lossy()),
                Err(e) => eprintln!("cannot write {}: {e}", path.to_string_lossy()),
            }
        }
        None => {
            println!("\nJSON:");
            print!("{text}");
        }
    }
}
