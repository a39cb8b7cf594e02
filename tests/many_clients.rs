//! A thousand clients at once, each on its own thread: every call is answered and every
//! event reaches every subscriber, in order, with nothing lost and nothing repeated.

mod common;

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{DEADLINE, Raw};
use serde_json::{Value, json};
use wsrpc::{Server, Stats};

const CLIENTS: usize = 1000;
/// Calls each client makes before the events, and again while they arrive.
const CALLS: u64 = 3;
const EVENTS: u64 = 50;
/// Client threads only parse small frames.
const CLIENT_STACK: usize = 128 << 10;

/// One client's connection, in its codec: even clients speak JSON, odd ones MessagePack.
struct Client {
    raw: Raw,
    msgpack: bool,
}

impl Client {
    fn connect(server: &Server, n: usize) -> Client {
        let msgpack = n % 2 == 1;
        let query = if msgpack { "&encoding=msgpack" } else { "" };
        let url = common::url(server, &format!("/?socket_id=c{n}{query}"));
        Client {
            raw: Raw::connect(&url),
            msgpack,
        }
    }

    fn send(&mut self, method: &str, params: Value, id: u64) {
        let call = json!({"jsonrpc": "2.0", "method": method, "params": params, "id": id});
        if self.msgpack {
            self.raw.send_msgpack(&call);
        } else {
            self.raw.send_text(&call.to_string());
        }
    }

    /// The next frame, as JSON with the `jsonrpc` member left out.
    fn recv(&mut self) -> Value {
        if self.msgpack {
            self.raw.recv_msgpack()
        } else {
            let mut frame = self.raw.recv();
            if frame.get("id").is_some() {
                let version = frame.as_object_mut().and_then(|m| m.remove("jsonrpc"));
                assert_eq!(version, Some(json!("2.0")), "a reply says jsonrpc 2.0");
            }
            frame
        }
    }
}

/// What one client saw.
struct Report {
    events: Vec<u64>,
    replies: usize,
}

/// One client's life: subscribe and call, say it is ready, then take `EVENTS` events
/// and `CALLS` more replies, in whatever order they interleave.
fn client(server: Server, n: usize, ready: mpsc::Sender<usize>) -> Report {
    let mut client = Client::connect(&server, n);
    client.send("rpc.on", json!(["newsUpdate"]), 0);
    assert_eq!(
        client.recv(),
        json!({"result": {"newsUpdate": "ok"}, "id": 0}),
        "client {n} subscribes"
    );
    let mut replies = 0;
    for k in 1..=CALLS {
        client.send("sum", json!([n, k]), k);
        assert_eq!(
            client.recv(),
            json!({"result": n as u64 + k, "id": k}),
            "client {n}, call {k}"
        );
        replies += 1;
    }
    ready.send(n).unwrap();
    drop(ready);
    // Calls made while the events come: their replies interleave with them.
    for k in CALLS + 1..=2 * CALLS {
        client.send("sum", json!([n, k]), k);
    }
    let mut events = Vec::new();
    let mut late = Vec::new();
    while events.len() < EVENTS as usize || late.len() < CALLS as usize {
        let frame = client.recv();
        if frame.get("notification").is_some() {
            let k = frame["params"][0].as_u64().expect("a numbered event");
            assert_eq!(
                frame,
                json!({"notification": "newsUpdate", "params": [k, "to all"]}),
                "client {n}"
            );
            events.push(k);
        } else {
            // Under load a call may be handed to another thread: replies may come in
            // any order.
            let k = frame["id"].as_u64().expect("a reply with an id");
            assert_eq!(
                frame,
                json!({"result": n as u64 + k, "id": k}),
                "client {n}"
            );
            late.push(k);
        }
    }
    late.sort_unstable();
    assert_eq!(
        late,
        (CALLS + 1..=2 * CALLS).collect::<Vec<_>>(),
        "client {n}"
    );
    replies += late.len();
    Report { events, replies }
}

#[test]
fn a_thousand_clients_each_get_every_reply_and_every_event() {
    let started = Instant::now();
    let mut config = common::quick_close(500);
    config.max_connections = 2 * CLIENTS;
    config.max_connections_per_ip = 2 * CLIENTS;
    let server = common::start_with(Server::builder().config(config));

    let (ready_tx, ready_rx) = mpsc::channel::<usize>();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let server = server.clone();
            let ready = ready_tx.clone();
            thread::Builder::new()
                .name(format!("client-{n}"))
                .stack_size(CLIENT_STACK)
                .spawn(move || client(server, n, ready))
                .expect("spawn a client thread")
        })
        .collect();
    drop(ready_tx);

    // Every client is connected, subscribed and has had its first calls answered.
    let until = Instant::now() + 3 * DEADLINE;
    let mut ready = vec![false; CLIENTS];
    for _ in 0..CLIENTS {
        let left = until.saturating_duration_since(Instant::now());
        match ready_rx.recv_timeout(left) {
            Ok(n) => ready[n] = true,
            Err(e) => panic!(
                "only {} of {CLIENTS} clients got ready ({e}); stats {:?}",
                ready.iter().filter(|r| **r).count(),
                server.stats()
            ),
        }
    }
    let connected = started.elapsed();
    // Checked after the events, so that a wrong count does not hide a lost event.
    let stats_when_ready = refusals_and_drops(&server);
    assert_eq!(server.clients().len(), CLIENTS);

    for k in 0..EVENTS {
        server.emit("newsUpdate", json!([k, "to all"])).unwrap();
    }
    let mut failed = Vec::new();
    for (n, thread) in threads.into_iter().enumerate() {
        match thread.join() {
            Ok(report) => {
                assert_eq!(
                    report.events,
                    (0..EVENTS).collect::<Vec<_>>(),
                    "client {n}: every event, in order, once"
                );
                assert_eq!(report.replies, 2 * CALLS as usize, "client {n}");
            }
            Err(_) => failed.push(n),
        }
    }
    assert!(failed.is_empty(), "clients failed: {failed:?}");
    let mut expected = Stats::default();
    expected.connections = CLIENTS;
    assert_eq!(
        stats_when_ready, expected,
        "with every client connected: {CLIENTS} open connections, nobody refused"
    );
    // Nobody was dropped as slow or for anything else, and every place is given back.
    expected.connections = 0;
    assert!(
        common::wait_until(|| refusals_and_drops(&server) == expected),
        "{:?}",
        server.stats()
    );
    eprintln!(
        "{CLIENTS} clients connected and ready in {connected:?}, all done in {:?}",
        started.elapsed()
    );
    server.close();
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "took {:?}",
        started.elapsed()
    );
}

/// The server's stats without what only says how busy it is (threads running now, and
/// how often connections waited for one): what is left counts refusals and drops.
fn refusals_and_drops(server: &Server) -> Stats {
    let mut stats = common::without_gauges(server.stats());
    stats.writers_at_cap = 0;
    stats.handoffs_at_cap = 0;
    stats
}
