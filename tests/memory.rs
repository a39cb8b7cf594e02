//! What incoming messages make the server hold, measured from this process's resident
//! memory (/proc/self/status). Resident memory is process-wide, so these tests run one
//! at a time and live in their own test binary.

mod common;

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::{DEADLINE, OP_TEXT, Wire, rss_kib, wait_until, ws_frame};
use wsrpc::{Server, ServerConfig};

/// One test at a time: each measures the whole process.
fn exclusive() -> MutexGuard<'static, ()> {
    static ONE: Mutex<()> = Mutex::new(());
    ONE.lock().unwrap_or_else(|e| e.into_inner())
}

fn server_with(config: ServerConfig) -> Server {
    common::start_with(Server::builder().config(config))
}

/// A JSON request of about `size` bytes: a call of a method that does not exist, so
/// the server answers at once with -32601.
fn big_request(size: usize) -> Vec<u8> {
    let head = r#"{"jsonrpc":"2.0","method":"nope","id":1,"params":[""#;
    let tail = r#""]}"#;
    let mut text = Vec::with_capacity(size);
    text.extend_from_slice(head.as_bytes());
    text.resize(size - tail.len(), b'x');
    text.extend_from_slice(tail.as_bytes());
    text
}

/// Resident memory once it has settled: the lowest of a few samples.
fn settled_rss_kib() -> u64 {
    let mut low = rss_kib();
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(40));
        low = low.min(rss_kib());
    }
    low
}

/// Connections that each receive one message of `size` bytes, answered, then idle.
fn used_connections(server: &Server, n: usize, frame: &[u8]) -> Vec<Wire> {
    (0..n)
        .map(|_| {
            let mut wire = Wire::connect(server, "/");
            wire.send(frame).unwrap();
            let reply = wire.read_frame().expect("a reply");
            assert!(String::from_utf8_lossy(&reply.payload).contains("-32601"));
            wire
        })
        .collect()
}

#[test]
fn an_idle_connection_gives_back_the_buffer_of_a_large_message() {
    let _one = exclusive();
    let server = server_with(ServerConfig::default());
    let frame = ws_frame(OP_TEXT, true, &big_request(4 << 20));
    // The allocator keeps freed memory in per-thread arenas (8 per core with glibc)
    // and reuses it: once a few connections per arena have received a message, what
    // the server keeps per connection shows in what more connections add.
    let arenas = 8 * std::thread::available_parallelism().map_or(4, |n| n.get());
    let warm = used_connections(&server, (4 * arenas).min(64), &frame);
    const N: usize = 32;

    let before = settled_rss_kib();
    let fresh: Vec<Wire> = (0..N).map(|_| Wire::connect(&server, "/")).collect();
    assert!(wait_until(|| server.stats().connections == warm.len() + N));
    let with_fresh = settled_rss_kib();
    let used = used_connections(&server, N, &frame);
    let after = settled_rss_kib();
    let per_fresh = with_fresh.saturating_sub(before) / N as u64;
    let per_used = after.saturating_sub(with_fresh) / N as u64;
    eprintln!("per connection: {per_fresh} KiB fresh, {per_used} KiB after one 4 MiB message");
    assert!(
        per_used < per_fresh + 256,
        "an idle connection holds {per_used} KiB after one 4 MiB message ({per_fresh} KiB fresh)"
    );
    drop((warm, fresh, used));
    server.close();
}
