//! The load generator's side of the wire: blocking tungstenite clients, requests in
//! either codec, replies and events decoded, and the server's figures from /proc.

use std::net::TcpStream;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

/// How frames are encoded: JSON text or MessagePack binary (PROTOCOL.md).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Codec {
    Json,
    MsgPack,
}

pub type Ws = WebSocket<TcpStream>;

/// A WebSocket client connection on a plain TCP stream (loopback only).
pub fn connect(url: &str) -> Result<Ws, String> {
    let addr = url
        .strip_prefix("ws://")
        .ok_or_else(|| format!("not a ws:// URL: {url}"))?;
    let stream = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    // A server that stops answering fails the run rather than hanging it.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let (ws, _) = tungstenite::client(url, stream).map_err(|e| format!("handshake: {e}"))?;
    Ok(ws)
}

/// A JSON-RPC request in `codec`.
pub fn request(codec: Codec, method: &str, params: Value, id: u64) -> Message {
    let call = json!({"jsonrpc": "2.0", "method": method, "params": params, "id": id});
    match codec {
        Codec::Json => Message::Text(call.to_string().into()),
        Codec::MsgPack => Message::Binary(
            rmp_serde::to_vec_named(&call)
                .expect("a JSON value encodes")
                .into(),
        ),
    }
}

/// A reply or event frame as a JSON value (MessagePack decoded); control frames are `None`.
pub fn decode(message: &Message) -> Option<Value> {
    match message {
        Message::Text(text) => serde_json::from_str(text).ok(),
        Message::Binary(bytes) => rmp_serde::from_slice(bytes).ok(),
        _ => None,
    }
}

/// Read the next data frame (text or binary).
pub fn read_data(ws: &mut Ws) -> Result<Message, tungstenite::Error> {
    loop {
        match ws.read()? {
            m @ (Message::Text(_) | Message::Binary(_)) => return Ok(m),
            _ => continue,
        }
    }
}

/// A request's reply: its result, or why there is none.
pub fn call(ws: &mut Ws, codec: Codec, method: &str, params: Value) -> Result<Value, String> {
    ws.send(request(codec, method, params, 1))
        .map_err(|e| format!("send {method}: {e}"))?;
    let reply = read_data(ws).map_err(|e| format!("read {method} reply: {e}"))?;
    let reply = decode(&reply).ok_or_else(|| format!("{method}: undecodable reply"))?;
    match reply.get("result") {
        Some(result) => Ok(result.clone()),
        None => Err(format!("{method}: {reply}")),
    }
}

/// A WebSocket frame's size on the wire for `payload` bytes (clients add a 4-byte mask).
pub fn frame_size(payload: usize, masked: bool) -> usize {
    let header = match payload {
        0..=125 => 2,
        126..=65535 => 4,
        _ => 10,
    };
    header + payload + if masked { 4 } else { 0 }
}

/// Microseconds since this process's first call: the clock of event timestamps.
pub fn now_us() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// The server's CPU time so far (user + system, seconds) from /proc/PID/stat.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name (which may hold spaces) start after ") ".
    let rest = stat.rsplit_once(") ")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on Linux.
    Some((user + system) as f64 / 100.0)
}

/// Times the server's threads have gone to sleep waiting for something (voluntary
/// context switches, summed over /proc/PID/task/*/status): each is one wake-up later.
/// Threads that ended are not counted.
pub fn sleeps(pid: u32) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0;
    for task in tasks.flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue; // ended since the listing
        };
        total += status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    Some(total)
}

/// A memory figure of the server from /proc/PID/status, in KiB (`VmRSS:`, `VmHWM:`).
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Latency percentiles (p50, p99, p99.9, by nearest rank) in milliseconds of samples
/// in microseconds.
pub fn percentiles(samples: &mut [u32]) -> [f64; 3] {
    samples.sort_unstable();
    let at = |p: f64| {
        let rank = (samples.len() as f64 * p).ceil() as usize;
        let i = rank.saturating_sub(1);
        samples
            .get(i)
            .map_or(f64::NAN, |us| f64::from(*us) / 1000.0)
    };
    [at(0.5), at(0.99), at(0.999)]
}

/// A client thread's outcome: its latency samples (µs), or why it failed.
pub type Samples = Result<Vec<u32>, String>;

/// Start `n` client threads, each running `client`.
pub fn clients<T: Send + 'static>(
    n: usize,
    client: impl Fn() -> T + Send + Sync + 'static,
) -> Result<Vec<thread::JoinHandle<T>>, String> {
    let client = std::sync::Arc::new(client);
    (0..n)
        .map(|_| {
            let client = client.clone();
            thread::Builder::new()
                .stack_size(256 << 10)
                .spawn(move || client())
                .map_err(|e| format!("cannot start a client thread: {e}"))
        })
        .collect()
}

/// Wait for the client threads: all their samples, or the first failure.
pub fn samples(clients: Vec<thread::JoinHandle<Samples>>) -> Samples {
    let mut all = Vec::new();
    for c in clients {
        all.extend(
            c.join()
                .map_err(|_| "a client thread panicked".to_owned())??,
        );
    }
    Ok(all)
}

/// What the server did over a workload's measured span.
pub struct Window {
    /// Calls answered or events delivered in the span.
    pub count: u64,
    pub per_second: f64,
    /// Per second of the server's CPU time (user + system). CPU time ticks at 10 ms:
    /// a (quick) span that used less has no figure.
    pub per_cpu_second: f64,
    /// The server's peak resident memory so far, MiB.
    pub peak_rss_mib: f64,
}

/// Let the workload warm up, then count `counter` for `span` with `measuring` set.
pub fn measure(
    pid: u32,
    warmup: Duration,
    span: Duration,
    counter: &AtomicU64,
    measuring: &AtomicBool,
) -> Window {
    thread::sleep(warmup);
    measuring.store(true, Ordering::SeqCst);
    let cpu_start = cpu_seconds(pid);
    let start_count = counter.load(Ordering::SeqCst);
    let start = Instant::now();
    thread::sleep(span);
    let count = counter.load(Ordering::SeqCst) - start_count;
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = match (cpu_start, cpu_seconds(pid)) {
        (Some(a), Some(b)) => b - a,
        _ => f64::NAN,
    };
    Window {
        count,
        per_second: count as f64 / elapsed,
        per_cpu_second: if cpu > 0.0 {
            count as f64 / cpu
        } else {
            f64::NAN
        },
        peak_rss_mib: status_kib(pid, "VmHWM:").map_or(f64::NAN, |kib| kib as f64 / 1024.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_ranked_sample() {
        let mut samples: Vec<u32> = (1..=1000).rev().map(|ms| ms * 1000).collect();
        assert_eq!(percentiles(&mut samples), [500.0, 990.0, 999.0]);
        assert_eq!(percentiles(&mut [7000]), [7.0, 7.0, 7.0]);
        assert!(percentiles(&mut []).iter().all(|p| p.is_nan()));
    }

    #[test]
    fn frames_are_sized_as_rfc_6455_says() {
        assert_eq!(frame_size(125, false), 127);
        assert_eq!(frame_size(126, true), 134);
        assert_eq!(frame_size(70_000, false), 70_010);
    }

    #[test]
    fn both_codecs_decode_to_the_same_value() {
        let params = json!([1, 2]);
        let text = request(Codec::Json, "sum", params.clone(), 7);
        let binary = request(Codec::MsgPack, "sum", params, 7);
        assert!(binary.is_binary());
        assert_eq!(decode(&text), decode(&binary));
        assert_eq!(decode(&text).unwrap()["id"], 7);
    }

    #[test]
    fn this_process_has_proc_figures() {
        let me = std::process::id();
        assert!(cpu_seconds(me).is_some());
        assert!(status_kib(me, "VmRSS:").unwrap() > 0);
        // Threads that sleep and wake count, whichever thread it is.
        let before = sleeps(me).unwrap();
        let sleeper = thread::spawn(|| {
            for _ in 0..3 {
                thread::sleep(Duration::from_millis(1));
            }
            sleeps(std::process::id()).unwrap()
        });
        let after = sleeper.join().unwrap();
        assert!(after >= before + 3, "{before} -> {after}");
    }
}
