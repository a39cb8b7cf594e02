//! Fan-out: S subscribers of one event, and an emitter that has the server send it as
//! fast as backpressure allows (or at a set rate). Backpressure is end to end: at most
//! `window` events are out at once, an event being out until every subscriber has it.
//! Each event carries `[seq, t]`, `t` the generator's clock when the emit call was
//! sent, so emit-to-receive latency is measured on one clock.

use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::WebSocket;
use tungstenite::protocol::Role;

use crate::peers::{EVENT, Subscribe};
use crate::wire::{self, Codec, Ws};

/// What one fan-out run asks of a server.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    pub subscribers: usize,
    /// Events out at once, at most.
    pub window: usize,
    /// Events per second to emit; `None`: as fast as the window allows.
    pub rate: Option<f64>,
    pub warmup: Duration,
    pub measure: Duration,
}

/// What one fan-out run measured.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Events received, summed over the subscribers, per second.
    pub delivered_per_second: f64,
    /// Emit-to-receive latency p50, p99, p99.9, milliseconds.
    pub latency_ms: [f64; 3],
    /// Events delivered per second of the server's CPU time.
    pub delivered_per_cpu_second: f64,
    pub peak_rss_mib: f64,
}

/// What the subscribers and the emitter share.
struct Shared {
    subscribers: usize,
    /// Subscribers that have event `seq`, at `seq % ring.len()`.
    ring: Vec<AtomicUsize>,
    /// Signalled when an event has reached every subscriber.
    complete: (Mutex<()>, Condvar),
    delivered: AtomicU64,
    stop: AtomicBool,
    measuring: AtomicBool,
    ready: Barrier,
}

/// Run `load` against the server at `url` (process `pid`); subscribers speak `codec`.
pub fn run(
    url: &str,
    codec: Codec,
    style: Subscribe,
    load: Load,
    pid: u32,
) -> Result<Outcome, String> {
    let window = load.window.max(1);
    let shared = Arc::new(Shared {
        subscribers: load.subscribers,
        ring: (0..2 * window).map(|_| AtomicUsize::new(0)).collect(),
        complete: (Mutex::new(()), Condvar::new()),
        delivered: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        measuring: AtomicBool::new(false),
        ready: Barrier::new(load.subscribers + 1),
    });
    let subscribers = wire::clients(load.subscribers, {
        let (url, shared) = (url.to_owned(), shared.clone());
        move || {
            let ws = wire::connect(&url).and_then(|ws| subscribe(ws, codec, style));
            // Every subscriber reaches the barrier, subscribed or not.
            shared.ready.wait();
            receive(ws?, &shared)
        }
    })?;
    shared.ready.wait();
    let emitter = {
        let (url, shared) = (url.to_owned(), shared.clone());
        thread::spawn(move || emit(&url, window, load.rate, &shared))
    };
    let measured = wire::measure(
        pid,
        load.warmup,
        load.measure,
        &shared.delivered,
        &shared.measuring,
    );
    {
        // Under the lock: the emitter looks at `stop` under it before it waits.
        let _guard = shared.complete.0.lock();
        shared.stop.store(true, Ordering::SeqCst);
        shared.complete.1.notify_all();
    }
    let emitted = emitter
        .join()
        .map_err(|_| "the emitter panicked".to_owned())?;
    let latencies = wire::samples(subscribers);
    emitted?;
    let mut latencies = latencies?;
    if measured.count == 0 {
        return Err("no event was delivered while measuring".into());
    }
    Ok(Outcome {
        delivered_per_second: measured.per_second,
        latency_ms: wire::percentiles(&mut latencies),
        delivered_per_cpu_second: measured.per_cpu_second,
        peak_rss_mib: measured.peak_rss_mib,
    })
}

/// Subscribe to the event; the reply must be a result.
pub fn subscribe(mut ws: Ws, codec: Codec, style: Subscribe) -> Result<Ws, String> {
    match style {
        Subscribe::RpcOn => wire::call(&mut ws, codec, "rpc.on", json!([EVENT]))?,
        Subscribe::Jsonrpsee => wire::call(&mut ws, codec, "subscribe_newsUpdate", json!([]))?,
    };
    Ok(ws)
}

/// `[seq, t]` of an event frame, in either server's notification format.
pub fn event_of(frame: &Value) -> Option<(u64, u64)> {
    let params = &frame["params"];
    // rpc-websockets and wsrpc: `params` is the array; jsonrpsee: `params.result`.
    let array = if params.is_array() {
        params
    } else {
        &params["result"]
    };
    Some((array[0].as_u64()?, array[1].as_u64()?))
}

/// One subscriber: count each event, and record its latency while measuring.
fn receive(mut ws: Ws, shared: &Shared) -> Result<Vec<u32>, String> {
    // Wake up now and then to see whether the run is over.
    let _ = ws
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(100)));
    let mut latencies = Vec::new();
    let ring = shared.ring.len() as u64;
    while !shared.stop.load(Ordering::Relaxed) {
        let frame = match wire::read_data(&mut ws) {
            Ok(frame) => frame,
            Err(tungstenite::Error::Io(e)) if is_timeout(&e) => continue,
            Err(e) => return Err(format!("subscriber: {e}")),
        };
        let value = wire::decode(&frame).unwrap_or_default();
        let (seq, t) = event_of(&value).ok_or_else(|| format!("not an event: {value}"))?;
        if shared.measuring.load(Ordering::Relaxed) {
            let us = wire::now_us().saturating_sub(t);
            latencies.push(us.min(u64::from(u32::MAX)) as u32);
        }
        shared.delivered.fetch_add(1, Ordering::Relaxed);
        let slot = &shared.ring[(seq % ring) as usize];
        if slot.fetch_add(1, Ordering::SeqCst) + 1 == shared.subscribers {
            let _guard = shared.complete.0.lock();
            shared.complete.1.notify_all();
        }
    }
    let _ = ws.close(None);
    Ok(latencies)
}

/// The emitter: `emit [EVENT, [seq, t]]` calls, never more than `window` events out.
fn emit(url: &str, window: usize, rate: Option<f64>, shared: &Shared) -> Result<(), String> {
    let mut link = EmitLink::open(url)?;
    let ring = shared.ring.len() as u64;
    let started = Instant::now();
    let mut result = Ok(());
    for seq in 0u64.. {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        if seq >= window as u64 {
            // Wait for event `seq - window` to reach everyone; its slot is reused next.
            if let Err(e) = wait_complete(shared, (seq - window as u64) % ring) {
                result = Err(format!("event {}: {e}", seq - window as u64));
                break;
            }
        }
        if let Some(rate) = rate {
            let due = started + Duration::from_secs_f64(seq as f64 / rate);
            thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        if let Err(e) = link.send(seq) {
            result = Err(e);
            break;
        }
    }
    link.close();
    result
}

/// The emitter's connection: it sends `emit [EVENT, [seq, t]]` calls, `t` the
/// generator's clock at the send; a second thread reads the replies and drops them.
pub struct EmitLink {
    writer: Ws,
    stop_reading: Arc<AtomicBool>,
    drain: thread::JoinHandle<()>,
}

impl EmitLink {
    pub fn open(url: &str) -> Result<EmitLink, String> {
        let mut reader = wire::connect(url)?;
        let stream: TcpStream = reader
            .get_ref()
            .try_clone()
            .map_err(|e| format!("emitter socket: {e}"))?;
        let writer = WebSocket::from_raw_socket(stream, Role::Client, None);
        let stop_reading = Arc::new(AtomicBool::new(false));
        let drain = {
            let stop = stop_reading.clone();
            let _ = reader
                .get_ref()
                .set_read_timeout(Some(Duration::from_millis(100)));
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match reader.read() {
                        Ok(_) => {}
                        Err(tungstenite::Error::Io(e)) if is_timeout(&e) => {}
                        // The emitter's next send fails too, and says why.
                        Err(_) => break,
                    }
                }
            })
        };
        Ok(EmitLink {
            writer,
            stop_reading,
            drain,
        })
    }

    /// Have the server emit event `seq`, stamped with the time now.
    pub fn send(&mut self, seq: u64) -> Result<(), String> {
        let params = json!([EVENT, [seq, wire::now_us()]]);
        let call = wire::request(Codec::Json, "emit", params, seq + 1);
        self.writer.send(call).map_err(|e| format!("emitter: {e}"))
    }

    /// Stop reading replies.
    pub fn close(self) {
        self.stop_reading.store(true, Ordering::SeqCst);
        let _ = self.drain.join();
    }
}

/// Whether a read failed only because its timeout passed.
pub fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// Block until ring slot `slot` counts every subscriber, then clear it.
fn wait_complete(shared: &Shared, slot: u64) -> Result<(), String> {
    let slot = &shared.ring[slot as usize];
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut guard = shared.complete.0.lock().unwrap_or_else(|e| e.into_inner());
    while slot.load(Ordering::SeqCst) < shared.subscribers {
        if shared.stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let got = slot.load(Ordering::SeqCst);
            return Err(format!(
                "{got} of {} subscribers got it in 10 s",
                shared.subscribers
            ));
        }
        guard = shared
            .complete
            .1
            .wait_timeout(guard, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
    slot.store(0, Ordering::SeqCst);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_read_in_both_formats() {
        let rpc_websockets = json!({"notification": EVENT, "params": [7, 123]});
        let jsonrpsee = json!({"jsonrpc": "2.0", "method": EVENT,
            "params": {"subscription": 5, "result": [7, 123]}});
        assert_eq!(event_of(&rpc_websockets), Some((7, 123)));
        assert_eq!(event_of(&jsonrpsee), Some((7, 123)));
        assert_eq!(event_of(&json!({"result": true, "id": 1})), None);
    }
}
