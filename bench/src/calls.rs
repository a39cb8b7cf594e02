//! Call workloads: C connections making `sum` calls, one at a time or K in flight on
//! each, for a fixed time after a warm-up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::wire::{self, Codec, Ws};

/// What one run asks of a server.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    pub connections: usize,
    /// Calls in flight on each connection.
    pub in_flight: usize,
    pub warmup: Duration,
    pub measure: Duration,
}

/// What one run measured.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub calls_per_second: f64,
    /// p50, p99, p99.9 in milliseconds.
    pub latency_ms: [f64; 3],
    /// Calls answered per second of the server's CPU time (user + system).
    pub calls_per_cpu_second: f64,
    /// The server's peak resident memory, MiB.
    pub peak_rss_mib: f64,
    /// Request and reply frames of one call, WebSocket headers and mask included.
    pub wire_bytes_per_call: usize,
}

/// What the workers share.
struct Shared {
    stop: AtomicBool,
    measuring: AtomicBool,
    calls: AtomicU64,
    wire: AtomicU64,
    ready: Barrier,
}

/// Run `load` against the server at `url` (process `pid`) in `codec`.
pub fn run(url: &str, codec: Codec, load: Load, pid: u32) -> Result<Outcome, String> {
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        measuring: AtomicBool::new(false),
        calls: AtomicU64::new(0),
        wire: AtomicU64::new(0),
        ready: Barrier::new(load.connections + 1),
    });
    let workers = wire::clients(load.connections, {
        let (url, shared) = (url.to_owned(), shared.clone());
        move || {
            // Every worker reaches the barrier, connected or not.
            let ws = wire::connect(&url);
            shared.ready.wait();
            worker(ws?, codec, load.in_flight.max(1), &shared)
        }
    })?;
    shared.ready.wait();
    let window = wire::measure(
        pid,
        load.warmup,
        load.measure,
        &shared.calls,
        &shared.measuring,
    );
    shared.stop.store(true, Ordering::SeqCst);
    let mut latencies = wire::samples(workers)?;
    if window.count == 0 {
        return Err("no call was answered while measuring".into());
    }
    Ok(Outcome {
        calls_per_second: window.per_second,
        latency_ms: wire::percentiles(&mut latencies),
        calls_per_cpu_second: window.per_cpu_second,
        peak_rss_mib: window.peak_rss_mib,
        wire_bytes_per_call: shared.wire.load(Ordering::SeqCst) as usize,
    })
}

/// One connection's calls, `in_flight` at a time, until told to stop; returns the
/// latencies (µs) of the calls answered while measuring. The first reply is checked.
fn worker(mut ws: Ws, codec: Codec, in_flight: usize, shared: &Shared) -> Result<Vec<u32>, String> {
    let mut latencies = Vec::new();
    let mut sent_at: HashMap<u64, Instant> = HashMap::new();
    let mut next_id = 0u64;
    let mut first_request = 0;
    for _ in 0..in_flight {
        next_id += 1;
        let size = send(&mut ws, codec, next_id, &mut sent_at)?;
        if next_id == 1 {
            first_request = size;
        }
    }
    while !shared.stop.load(Ordering::Relaxed) {
        let reply = wire::read_data(&mut ws).map_err(|e| format!("reading a reply: {e}"))?;
        // With one call in flight the reply is that call's; otherwise read its id.
        let id = if in_flight == 1 {
            next_id
        } else {
            wire::decode(&reply)
                .and_then(|v| v["id"].as_u64())
                .unwrap_or(0)
        };
        if id == 1 {
            let value = wire::decode(&reply).unwrap_or_default();
            if value["id"] != 1 || value["result"] != 4 {
                return Err(format!("wrong reply to sum [1, 3]: {value}"));
            }
            let total = first_request + wire::frame_size(reply.len(), false);
            shared.wire.store(total as u64, Ordering::Relaxed);
        }
        let Some(at) = sent_at.remove(&id) else {
            return Err(format!("a reply to no call (id {id})"));
        };
        if shared.measuring.load(Ordering::Relaxed) {
            latencies.push(at.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
        }
        shared.calls.fetch_add(1, Ordering::Relaxed);
        next_id += 1;
        send(&mut ws, codec, next_id, &mut sent_at)?;
    }
    let _ = ws.close(None);
    Ok(latencies)
}

/// Send call `id` (`sum [id, 3]`); returns its frame's size on the wire.
fn send(
    ws: &mut Ws,
    codec: Codec,
    id: u64,
    sent_at: &mut HashMap<u64, Instant>,
) -> Result<usize, String> {
    let call = wire::request(codec, "sum", json!([id, 3]), id);
    let size = wire::frame_size(call.len(), true);
    sent_at.insert(id, Instant::now());
    ws.send(call).map_err(|e| format!("sending a call: {e}"))?;
    Ok(size)
}
