//! A load generator: C connections making `sum` calls (K in flight on each, 1 by
//! default) for a few seconds, reporting calls/s, latency percentiles, the server's
//! calls per CPU-second and peak RSS (read from /proc), and bytes on the wire per call.
//! `--idle N` instead holds N connections open and reports the server's RSS per
//! connection. `make bench` runs it with `--compare`: it starts wsrpc's fixture server,
//! the rpc-websockets (Node) fixture server and a bare tungstenite server as child
//! processes and measures them in the same run, wsrpc in both codecs.
//!
//! cargo run --release --example load -- [--url ws://127.0.0.1:PORT] [--msgpack]
//!     [-c 16] [-k 1] [-s 5] [--idle N] [--compare]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::Message;

#[derive(Clone, Copy, PartialEq)]
enum Codec {
    Json,
    MsgPack,
}

struct Options {
    url: Option<String>,
    codec: Codec,
    connections: usize,
    in_flight: usize,
    seconds: u64,
    idle: Option<usize>,
    compare: bool,
}

#[derive(Clone, Copy)]
struct Load {
    codec: Codec,
    connections: usize,
    /// Calls in flight on each connection.
    in_flight: usize,
    seconds: u64,
}

struct Outcome {
    calls_per_second: f64,
    /// Latency percentiles p50, p99, p99.9, in milliseconds.
    latency_ms: [f64; 3],
    /// Calls answered per second of server CPU time (user + system), if known.
    calls_per_cpu_second: Option<f64>,
    /// The server's peak resident memory, MiB, if known.
    peak_rss_mib: Option<f64>,
    /// Request and reply frames of one call, WebSocket headers (and the client's mask)
    /// included.
    wire_bytes_per_call: usize,
}

fn main() {
    let mut o = Options {
        url: None,
        codec: Codec::Json,
        connections: 16,
        in_flight: 1,
        seconds: 5,
        idle: None,
        compare: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().expect("a value after the flag");
        match a.as_str() {
            "--url" => o.url = Some(value()),
            "--msgpack" => o.codec = Codec::MsgPack,
            "-c" => o.connections = value().parse().expect("-c takes a number"),
            "-s" => o.seconds = value().parse().expect("-s takes seconds"),
            "-k" => o.in_flight = value().parse().expect("-k takes a number"),
            "--idle" => o.idle = Some(value().parse().expect("--idle takes a number")),
            "--compare" => o.compare = true,
            "--serve-bare" => return serve_bare(),
            "--port" => drop(value()),
            other => panic!("unknown argument {other}"),
        }
    }
    let load = |codec| Load {
        codec,
        connections: o.connections,
        in_flight: o.in_flight.max(1),
        seconds: o.seconds,
    };
    if let Some(url) = &o.url {
        report(url, &run(url, load(o.codec), None), &load(o.codec));
        return;
    }
    let exe = std::env::current_exe().expect("own path");
    let wsrpc = vec![exe.with_file_name("interop_server").display().to_string()];
    let mut peers: Vec<(&str, Vec<String>, Codec)> =
        vec![("wsrpc json", wsrpc.clone(), Codec::Json)];
    if o.compare {
        peers.push(("wsrpc msgpack", wsrpc, Codec::MsgPack));
        let node = vec!["node".into(), "interop/js_server.mjs".into()];
        peers.push(("rpc-websockets (node)", node, Codec::Json));
        let bare = vec![exe.display().to_string(), "--serve-bare".into()];
        peers.push(("bare tungstenite", bare, Codec::Json));
    }
    let mut results = Vec::new();
    for (name, cmd, codec) in peers {
        let (mut child, port) = spawn(&cmd);
        let url = format!("ws://127.0.0.1:{port}");
        if let Some(n) = o.idle {
            idle(name, &url, n, child.id());
            let _ = child.kill();
            let _ = child.wait();
            continue;
        }
        let outcome = run(&url, load(codec), Some(child.id()));
        let _ = child.kill();
        let _ = child.wait();
        report(name, &outcome, &load(codec));
        results.push((name, outcome.calls_per_second));
    }
    if let [(ours, rate), rest @ ..] = results.as_slice() {
        for (name, other) in rest {
            println!("{ours} / {name}: {:.2}x", rate / other);
        }
    }
}

fn report(name: &str, o: &Outcome, load: &Load) {
    let known =
        |x: Option<f64>, digits: usize| x.map_or("?".to_owned(), |x| format!("{x:.digits$}"));
    println!(
        "{name:<22} {:>8.0} calls/s  p50 {:.3} p99 {:.3} p99.9 {:.3} ms  {:>7} calls/CPU-s  \
         peak RSS {} MiB  {} B/call  ({} connections x {} in flight)",
        o.calls_per_second,
        o.latency_ms[0],
        o.latency_ms[1],
        o.latency_ms[2],
        known(o.calls_per_cpu_second, 0),
        known(o.peak_rss_mib, 1),
        o.wire_bytes_per_call,
        load.connections,
        load.in_flight,
    );
}

/// The server's CPU time so far (user + system, seconds) from /proc/PID/stat.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name (which may hold spaces) start after ") ".
    let rest = stat.rsplit_once(") ")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on Linux.
    Some((user + system) as f64 / 100.0)
}

/// A memory figure of the server from /proc/PID/status, in KiB (`VmRSS:`, `VmHWM:`).
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Hold `n` idle connections and report what they cost the server.
fn idle(name: &str, url: &str, n: usize, pid: u32) {
    let before = status_kib(pid, "VmRSS:");
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        match tungstenite::connect(url) {
            Ok((ws, _)) => held.push(ws),
            Err(e) => {
                println!("{name}: connection {} failed: {e}", held.len() + 1);
                break;
            }
        }
    }
    // Give the server's threads a moment to reach their idle state before measuring.
    thread::sleep(Duration::from_secs(1));
    let after = status_kib(pid, "VmRSS:");
    let answering = tungstenite::connect(url)
        .ok()
        .and_then(|(mut ws, _)| {
            ws.send(request(Codec::Json, 1)).ok()?;
            ws.read().ok()
        })
        .is_some();
    match (before, after) {
        (Some(b), Some(a)) => {
            let mib = a.saturating_sub(b) as f64 / 1024.0;
            println!(
                "{name:<22} {} idle connections: server RSS +{mib:.1} MiB, {:.1} MiB per 1,000; still answering: {answering}",
                held.len(),
                mib * 1000.0 / held.len().max(1) as f64,
            );
        }
        _ => println!("{name}: no /proc figures"),
    }
}

/// The practical upper bound of this design: a tungstenite thread-per-connection
/// server that parses each call and answers `sum` on the connection's own thread.
fn serve_bare() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    println!("listening on {}", listener.local_addr().unwrap());
    for stream in listener.incoming().flatten() {
        thread::spawn(move || {
            let _ = stream.set_nodelay(true);
            let Ok(mut ws) = tungstenite::accept(stream) else {
                return;
            };
            while let Ok(msg) = ws.read() {
                let Message::Text(text) = msg else { continue };
                let v: Value = serde_json::from_str(&text).unwrap_or_default();
                let sum: f64 = v["params"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_f64).sum())
                    .unwrap_or(0.0);
                let reply = json!({"jsonrpc": "2.0", "result": sum, "id": v["id"]});
                if ws.send(Message::Text(reply.to_string().into())).is_err() {
                    break;
                }
            }
        });
    }
}

fn spawn(cmd: &[String]) -> (Child, u16) {
    let mut child = Command::new(&cmd[0])
        .args(&cmd[1..])
        .args(["--port", "0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start {cmd:?}: {e} (cargo build --release --example interop_server)")
        });
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("listening on HOST:PORT");
    (child, port)
}

/// A WebSocket frame's size on the wire for `payload` bytes (clients add a 4-byte mask).
fn frame_size(payload: usize, masked: bool) -> usize {
    let header = match payload {
        0..=125 => 2,
        126..=65535 => 4,
        _ => 10,
    };
    header + payload + if masked { 4 } else { 0 }
}

fn request(codec: Codec, id: u64) -> Message {
    let call = json!({"jsonrpc": "2.0", "method": "sum", "params": [id, 3], "id": id});
    match codec {
        Codec::Json => Message::Text(call.to_string().into()),
        Codec::MsgPack => Message::Binary(rmp_serde::to_vec_named(&call).unwrap().into()),
    }
}

fn run(url: &str, load: Load, server_pid: Option<u32>) -> Outcome {
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let wire = Arc::new(AtomicU64::new(0));
    let ready = Arc::new(Barrier::new(load.connections + 1));
    let workers: Vec<_> = (0..load.connections)
        .map(|_| {
            let shared = Shared {
                stop: stop.clone(),
                measuring: measuring.clone(),
                calls: calls.clone(),
                wire: wire.clone(),
                ready: ready.clone(),
            };
            let url = url.to_owned();
            thread::spawn(move || worker(&url, load, &shared))
        })
        .collect();
    ready.wait();
    // Warm up one second, then count.
    thread::sleep(Duration::from_secs(1));
    measuring.store(true, Ordering::Relaxed);
    let cpu_start = server_pid.and_then(cpu_seconds);
    let start_calls = calls.load(Ordering::Relaxed);
    let start = Instant::now();
    thread::sleep(Duration::from_secs(load.seconds));
    let done = calls.load(Ordering::Relaxed) - start_calls;
    let elapsed = start.elapsed().as_secs_f64();
    let cpu_end = server_pid.and_then(cpu_seconds);
    stop.store(true, Ordering::Relaxed);
    let mut latencies: Vec<u32> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap_or_default())
        .collect();
    latencies.sort_unstable();
    let percentile = |p: f64| {
        let last = latencies.len().saturating_sub(1);
        let i = ((latencies.len() as f64 * p) as usize).min(last);
        latencies.get(i).map_or(0.0, |us| f64::from(*us) / 1000.0)
    };
    let calls_per_cpu_second = match (cpu_start, cpu_end) {
        (Some(a), Some(b)) if b > a => Some(done as f64 / (b - a)),
        _ => None,
    };
    Outcome {
        calls_per_second: done as f64 / elapsed,
        latency_ms: [percentile(0.5), percentile(0.99), percentile(0.999)],
        calls_per_cpu_second,
        peak_rss_mib: server_pid
            .and_then(|pid| status_kib(pid, "VmHWM:"))
            .map(|kib| kib as f64 / 1024.0),
        wire_bytes_per_call: wire.load(Ordering::Relaxed) as usize,
    }
}

/// What the load's workers share.
struct Shared {
    stop: Arc<AtomicBool>,
    measuring: Arc<AtomicBool>,
    calls: Arc<AtomicU64>,
    wire: Arc<AtomicU64>,
    ready: Arc<Barrier>,
}

/// One connection's calls, `in_flight` at a time; returns the latencies (µs) of the
/// calls answered while measuring.
fn worker(url: &str, load: Load, shared: &Shared) -> Vec<u32> {
    let (mut ws, _) = tungstenite::connect(url).expect("connect");
    shared.ready.wait();
    let mut latencies = Vec::new();
    let mut sent_at: HashMap<u64, Instant> = HashMap::new();
    let mut next_id = 0u64;
    let mut first_request = 0;
    for _ in 0..load.in_flight {
        next_id += 1;
        first_request = send(&mut ws, load.codec, next_id, &mut sent_at);
    }
    while !shared.stop.load(Ordering::Relaxed) {
        let reply = loop {
            match ws.read().expect("read") {
                m @ (Message::Text(_) | Message::Binary(_)) => break m,
                _ => continue,
            }
        };
        // With one call in flight the reply is that call's; otherwise read its id.
        let id = if load.in_flight == 1 {
            next_id
        } else {
            reply_id(&reply)
        };
        if let Some(at) = sent_at.remove(&id)
            && shared.measuring.load(Ordering::Relaxed)
        {
            latencies.push(at.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
        }
        if id == 1 {
            let total = first_request + frame_size(reply.len(), false);
            shared.wire.store(total as u64, Ordering::Relaxed);
        }
        shared.calls.fetch_add(1, Ordering::Relaxed);
        next_id += 1;
        send(&mut ws, load.codec, next_id, &mut sent_at);
    }
    let _ = ws.close(None);
    latencies
}

/// Send call `id`; returns its frame's size on the wire.
fn send<S: std::io::Read + std::io::Write>(
    ws: &mut tungstenite::WebSocket<S>,
    codec: Codec,
    id: u64,
    sent_at: &mut HashMap<u64, Instant>,
) -> usize {
    let call = request(codec, id);
    let size = frame_size(call.len(), true);
    sent_at.insert(id, Instant::now());
    ws.send(call).expect("send");
    size
}

fn reply_id(reply: &Message) -> u64 {
    let value: Option<Value> = match reply {
        Message::Text(text) => serde_json::from_str(text).ok(),
        Message::Binary(bytes) => rmp_serde::from_slice(bytes).ok(),
        _ => None,
    };
    value.and_then(|v| v["id"].as_u64()).unwrap_or(0)
}
