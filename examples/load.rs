//! A small load generator: C connections making sequential `sum` calls for a few
//! seconds, reporting calls/s and bytes on the wire per call. `make bench` runs it with
//! `--compare`: it starts wsrpc's fixture server, the rpc-websockets (Node) fixture
//! server and a bare tungstenite server as child processes and measures them in the
//! same run, wsrpc in both codecs. (The full benchmark suite comes later.)
//!
//! cargo run --release --example load -- [--url ws://127.0.0.1:PORT] [--msgpack]
//!     [-c 16] [-s 5] [--compare]

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
    seconds: u64,
    compare: bool,
}

struct Outcome {
    calls_per_second: f64,
    /// Request and reply frames of one call, WebSocket headers (and the client's mask)
    /// included.
    wire_bytes_per_call: usize,
}

fn main() {
    let mut o = Options {
        url: None,
        codec: Codec::Json,
        connections: 16,
        seconds: 5,
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
            "--compare" => o.compare = true,
            "--serve-bare" => return serve_bare(),
            "--port" => drop(value()),
            other => panic!("unknown argument {other}"),
        }
    }
    if let Some(url) = &o.url {
        report(
            url,
            &run(url, o.codec, o.connections, o.seconds),
            o.connections,
        );
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
        let outcome = run(
            &format!("ws://127.0.0.1:{port}"),
            codec,
            o.connections,
            o.seconds,
        );
        let _ = child.kill();
        let _ = child.wait();
        report(name, &outcome, o.connections);
        results.push((name, outcome.calls_per_second));
    }
    if let [(ours, rate), rest @ ..] = results.as_slice() {
        for (name, other) in rest {
            println!("{ours} / {name}: {:.2}x", rate / other);
        }
    }
}

fn report(name: &str, outcome: &Outcome, connections: usize) {
    println!(
        "{name:<24} {:>10.0} calls/s  {:>4} bytes/call on the wire  ({connections} connections, sequential sum)",
        outcome.calls_per_second, outcome.wire_bytes_per_call
    );
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

fn run(url: &str, codec: Codec, connections: usize, seconds: u64) -> Outcome {
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let wire = Arc::new(AtomicU64::new(0));
    let ready = Arc::new(Barrier::new(connections + 1));
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            let (stop, calls, wire, ready) =
                (stop.clone(), calls.clone(), wire.clone(), ready.clone());
            let url = url.to_owned();
            thread::spawn(move || {
                let (mut ws, _) = tungstenite::connect(&url).expect("connect");
                ready.wait();
                let mut id = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    id += 1;
                    let call = request(codec, id);
                    let sent = frame_size(call.len(), true);
                    ws.send(call).expect("send");
                    let received = loop {
                        match ws.read().expect("read") {
                            m @ (Message::Text(_) | Message::Binary(_)) => break m.len(),
                            _ => continue,
                        }
                    };
                    if id == 1 {
                        wire.store(
                            (sent + frame_size(received, false)) as u64,
                            Ordering::Relaxed,
                        );
                    }
                    calls.fetch_add(1, Ordering::Relaxed);
                }
                let _ = ws.close(None);
            })
        })
        .collect();
    ready.wait();
    // Warm up one second, then count.
    thread::sleep(Duration::from_secs(1));
    let start_calls = calls.load(Ordering::Relaxed);
    let start = Instant::now();
    thread::sleep(Duration::from_secs(seconds));
    let done = calls.load(Ordering::Relaxed) - start_calls;
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    Outcome {
        calls_per_second: done as f64 / elapsed,
        wire_bytes_per_call: wire.load(Ordering::Relaxed) as usize,
    }
}
