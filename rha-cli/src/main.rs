//! The rha command-line tool.
fn main() {
    println!("rha {}", env!("CARGO_PKG_VERSION"));
}
