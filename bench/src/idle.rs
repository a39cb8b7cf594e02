//! Idle connections: N held open after the handshake, and what they cost the server.

use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::wire::{self, Codec, Ws};

/// What holding the connections measured.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Connections held open.
    pub held: usize,
    /// Server RSS growth per 1,000 of them, MiB.
    pub mib_per_1000: f64,
    /// Whether a further connection still got its `sum` answered.
    pub answering: bool,
}

/// Open `n` connections to the server at `url` (process `pid`) and hold them until
/// the server's RSS settles. The connections are returned so that the caller can stop
/// the server first (its side then keeps the TIME_WAIT sockets, not ours).
pub fn run(url: &str, n: usize, pid: u32) -> Result<(Outcome, Vec<Ws>), String> {
    let before = wire::status_kib(pid, "VmRSS:").ok_or("no /proc figures for the server")?;
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        held.push(wire::connect(url).map_err(|e| format!("connection {}: {e}", i + 1))?);
    }
    let after = settled_rss(pid).ok_or("the server is gone")?;
    let answering = wire::connect(url)
        .and_then(|mut ws| wire::call(&mut ws, Codec::Json, "sum", json!([1, 3])))
        .is_ok_and(|sum| sum == 4);
    let mib = after.saturating_sub(before) as f64 / 1024.0;
    let outcome = Outcome {
        held: held.len(),
        mib_per_1000: mib * 1000.0 / n.max(1) as f64,
        answering,
    };
    Ok((outcome, held))
}

/// The server's RSS (KiB) once it has stopped growing: the same in three readings
/// 100 ms apart, or after 10 s, whichever comes first.
fn settled_rss(pid: u32) -> Option<u64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = wire::status_kib(pid, "VmRSS:")?;
    let mut steady = 0;
    while steady < 3 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
        let now = wire::status_kib(pid, "VmRSS:")?;
        steady = if now == last { steady + 1 } else { 0 };
        last = now;
    }
    Some(last)
}
