//! A small load generator: C connections making sequential `sum` calls for a few
//! seconds, reporting calls/s. `make bench` runs it with `--compare`, which starts the
//! wsrpc fixture server and the rpc-websockets (Node) fixture server as child processes
//! and measures both in the same run. (The full benchmark suite is `make bench` later.)
//!
//! cargo run --release --example load -- [--url ws://127.0.0.1:PORT] [-c 16] [-s 5] [--compare]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use tungstenite::Message;

struct Options {
    url: Option<String>,
    connections: usize,
    seconds: u64,
    compare: bool,
}

fn main() {
    let mut o = Options {
        url: None,
        connections: 16,
        seconds: 5,
        compare: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().expect("a value after the flag");
        match a.as_str() {
            "--url" => o.url = Some(value()),
            "-c" => o.connections = value().parse().expect("-c takes a number"),
            "-s" => o.seconds = value().parse().expect("-s takes seconds"),
            "--compare" => o.compare = true,
            "--serve-bare" => return serve_bare(),
            other => panic!("unknown argument {other}"),
        }
    }
    if let Some(url) = &o.url {
        println!("{url}: {:.0} calls/s", run(url, o.connections, o.seconds));
        return;
    }
    let mut results = Vec::new();
    let exe = std::env::current_exe().expect("own path");
    let server = exe.with_file_name("interop_server");
    let peers: Vec<(&str, Vec<String>)> = if o.compare {
        vec![
            ("wsrpc", vec![server.display().to_string()]),
            (
                "rpc-websockets (node)",
                vec!["node".into(), "interop/js_server.mjs".into()],
            ),
            (
                "bare tungstenite",
                vec![exe.display().to_string(), "--serve-bare".into()],
            ),
        ]
    } else {
        vec![("wsrpc", vec![server.display().to_string()])]
    };
    for (name, cmd) in peers {
        let (mut child, port) = spawn(&cmd);
        let rate = run(&format!("ws://127.0.0.1:{port}"), o.connections, o.seconds);
        let _ = child.kill();
        let _ = child.wait();
        println!(
            "{name:<24} {:>10.0} calls/s  ({} connections, sequential sum)",
            rate, o.connections
        );
        results.push((name, rate));
    }
    if let [(_, ours), rest @ ..] = results.as_slice() {
        for (name, rate) in rest {
            println!("wsrpc / {name}: {:.2}x", ours / rate);
        }
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
                let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                let sum: f64 = v["params"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|x| x.as_f64()).sum())
                    .unwrap_or(0.0);
                let reply = serde_json::json!({"jsonrpc": "2.0", "result": sum, "id": v["id"]});
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
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e} (build it with cargo build --release --example interop_server)"));
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

fn run(url: &str, connections: usize, seconds: u64) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let ready = Arc::new(Barrier::new(connections + 1));
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            let (stop, calls, ready, url) =
                (stop.clone(), calls.clone(), ready.clone(), url.to_owned());
            thread::spawn(move || {
                let (mut ws, _) = tungstenite::connect(&url).expect("connect");
                ready.wait();
                let mut id = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    id += 1;
                    let frame = format!(
                        r#"{{"jsonrpc":"2.0","method":"sum","params":[{id},3],"id":{id}}}"#
                    );
                    ws.send(Message::Text(frame.into())).expect("send");
                    loop {
                        match ws.read().expect("read") {
                            Message::Text(_) => break,
                            _ => continue,
                        }
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
    done as f64 / elapsed
}
