//! Rewrite `include/davi.h` from the sources (the header is committed; `tests/header.rs`
//! checks it is current):
//!
//! ```sh
//! cargo run -p davi-capi --example gen-header
//! ```
#[path = "../gen/header.rs"]
mod header;

fn main() {
    let text = header::generate().unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(1);
    });
    let path = header::header_path();
    std::fs::write(&path, text).unwrap_or_else(|e| {
        eprintln!("error: writing {}: {e}", path.display());
        std::process::exit(1);
    });
    println!("wrote {}", path.display());
}
