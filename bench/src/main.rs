//! placeholder
mod jsonrpsee_peer;
fn main() {
    if std::env::args().nth(1).as_deref() == Some("--serve") { jsonrpsee_peer::serve(); }
}
