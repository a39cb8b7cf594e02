//! A default-configured server stays up, bounded and stoppable: no deadlock between
//! subscriptions and parked sessions, a cap on the threads a client can make the
//! server start, and a `close()` that returns whatever handlers do.

mod common;

use std::net::Shutdown;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use common::{DEADLINE, Raw, feed_subscribers, peak_of, url};
use serde_json::{Value, json};
use wsrpc::{Server, ServerConfig};

/// Run `f` on its own thread; `None` if it has not returned within `DEADLINE`.
fn within_deadline<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(DEADLINE).ok()
}

/// Subscribers that read everything they are sent until told to stop.
fn draining_subscribers(server: &Server, n: usize, stop: &Arc<AtomicBool>) {
    for mut raw in feed_subscribers(server, n) {
        let stop = stop.clone();
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if raw.ws.read().is_err() {
                    break;
                }
            }
        });
    }
}

#[test]
fn subscribing_while_emits_flood_and_clients_drop_does_not_stop_the_server() {
    let mut config = ServerConfig::default();
    config.session_ttl = Some(Duration::from_secs(60));
    let server = Server::builder()
        .config(config)
        .bind("127.0.0.1:0")
        .unwrap();
    server.event("feed");
    let stop = Arc::new(AtomicBool::new(false));
    draining_subscribers(&server, 100, &stop);
    // Emits outpace the fan-out to 100 subscribers: the dispatcher's channel stays full.
    let emitters: Vec<_> = (0..4)
        .map(|_| {
            let (server, stop) = (server.clone(), stop.clone());
            thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let _ = server.emit("feed", [i]);
                    i += 1;
                }
            })
        })
        .collect();
    // Each victim subscribes and vanishes at once: its rpc.on may still be on its way to
    // the dispatcher when the dispatcher parks its session.
    let victims: Vec<_> = (0..2)
        .map(|_| {
            let url = url(&server, "/");
            thread::spawn(move || {
                for _ in 0..200 {
                    let mut victim = Raw::connect(&url);
                    victim.send_text(
                        r#"{"jsonrpc":"2.0","method":"rpc.on","params":["feed"],"id":1}"#,
                    );
                    let _ = victim.tcp().shutdown(Shutdown::Both);
                }
            })
        })
        .collect();
    for victim in victims {
        victim.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for emitter in emitters {
        emitter.join().unwrap();
    }
    let probe = server.clone();
    let answered = within_deadline(move || probe.clients().len());
    assert!(answered.is_some(), "the dispatcher stopped answering");
    let closer = server.clone();
    assert!(
        within_deadline(move || closer.close()).is_some(),
        "close() did not return"
    );
}

/// A method that blocks until `release` is set, and counts the calls that started.
fn blocking_method(server: &Server, name: &str) -> (Arc<AtomicBool>, Arc<AtomicUsize>) {
    let release = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicUsize::new(0));
    let (r, s) = (release.clone(), started.clone());
    server.register(name, move |_: Value, _| {
        s.fetch_add(1, Ordering::SeqCst);
        common::wait_until(|| r.load(Ordering::SeqCst));
        Ok::<_, wsrpc::RpcError>("done")
    });
    (release, started)
}

#[test]
fn pipelined_slow_calls_start_no_more_hand_off_threads_than_the_cap() {
    let mut config = ServerConfig::default();
    config.max_handoff_threads = 6;
    let server = Server::builder()
        .config(config)
        .bind("127.0.0.1:0")
        .unwrap();
    let (release, started) = blocking_method(&server, "slow");
    let stop = Arc::new(AtomicBool::new(false));
    let peak = peak_of(&server, |s| s.handoff_threads, &stop);
    let mut clients: Vec<Raw> = (0..5).map(|_| Raw::connect(&url(&server, "/"))).collect();
    for client in &mut clients {
        for id in 0..8 {
            client.send_text(&format!(
                r#"{{"jsonrpc":"2.0","method":"slow","params":[],"id":{id}}}"#
            ));
        }
    }
    // Without the cap each connection would read on past every slow call: 5 x 7
    // hand-offs. With it, the server stops at 6 and the rest wait their turn.
    assert!(common::wait_until(|| server.stats().handoffs_at_cap > 0));
    assert!(common::wait_until(
        || started.load(Ordering::SeqCst) >= 5 + 6
    ));
    release.store(true, Ordering::SeqCst);
    for client in &mut clients {
        let mut ids: Vec<u64> = (0..8)
            .map(|_| client.recv()["id"].as_u64().unwrap())
            .collect();
        ids.sort();
        assert_eq!(ids, (0..8).collect::<Vec<_>>(), "a call was not answered");
    }
    stop.store(true, Ordering::SeqCst);
    let peak = peak.join().unwrap();
    assert!(peak <= 6, "{peak} hand-off threads ran at once (cap 6)");
    assert!(common::wait_until(|| server.stats().handoff_threads == 0));
    server.close();
}

#[test]
fn events_to_many_subscribers_go_through_at_most_max_writer_threads() {
    let mut config = ServerConfig::default();
    config.max_writer_threads = 3;
    let server = Server::builder()
        .config(config)
        .bind("127.0.0.1:0")
        .unwrap();
    server.event("feed");
    let mut subscribers = feed_subscribers(&server, 60);
    let stop = Arc::new(AtomicBool::new(false));
    let peak = peak_of(&server, |s| s.writer_threads, &stop);
    for i in 0..20 {
        server.emit("feed", [i]).unwrap();
    }
    for raw in &mut subscribers {
        for i in 0..20 {
            assert_eq!(
                raw.recv()["params"],
                json!([i]),
                "an event lost or out of order"
            );
        }
    }
    stop.store(true, Ordering::SeqCst);
    let peak = peak.join().unwrap();
    // Whether the pool grew to its cap depends on timing; that it stops there is
    // pinned in src/server/threads.rs.
    assert!(peak <= 3, "{peak} writer threads ran at once (cap 3)");
    server.close();
}

#[test]
fn close_returns_while_a_handler_never_does() {
    let server = Server::builder()
        .config(common::quick_close(200))
        .bind("127.0.0.1:0")
        .unwrap();
    let (_release, started) = blocking_method(&server, "forever");
    server.register("sleep_max", |_: Value, _| {
        thread::sleep(Duration::MAX);
        Ok::<_, wsrpc::RpcError>(())
    });
    let mut client = Raw::connect(&url(&server, "/"));
    client.send_text(r#"{"jsonrpc":"2.0","method":"sleep_max","id":1}"#);
    client.send_text(r#"{"jsonrpc":"2.0","method":"forever","id":2}"#);
    assert!(common::wait_until(|| started.load(Ordering::SeqCst) == 1));
    let closer = server.clone();
    assert!(
        within_deadline(move || closer.close()).is_some(),
        "close() waited for handlers that never return"
    );
    assert!(within_deadline(move || server.wait()).is_some());
}

/// A server whose `hook` closes it, and a client that sets the hook off.
fn closed_from(builder: wsrpc::ServerBuilder, trigger: impl FnOnce(&Server)) {
    let server = builder
        .config(common::quick_close(200))
        .bind("127.0.0.1:0")
        .unwrap();
    server.register("close", |_: Value, ctx| {
        ctx.server().close();
        Ok::<_, wsrpc::RpcError>("closed")
    });
    trigger(&server);
    let waiter = server.clone();
    assert!(
        within_deadline(move || waiter.wait()).is_some(),
        "the server did not close"
    );
    let again = server.clone();
    assert!(within_deadline(move || again.close()).is_some());
}

#[test]
fn close_may_be_called_from_a_handler() {
    closed_from(Server::builder(), |server| {
        let mut client = Raw::connect(&url(server, "/"));
        client.send_text(r#"{"jsonrpc":"2.0","method":"close","id":1}"#);
    });
}

#[test]
fn close_may_be_called_from_on_connection_and_on_disconnection() {
    let slot: Arc<std::sync::Mutex<Option<Server>>> = Arc::default();
    let hook_slot = slot.clone();
    closed_from(
        Server::builder().on_connection(move |_| {
            if let Some(server) = hook_slot.lock().unwrap().clone() {
                server.close();
            }
        }),
        |server| {
            *slot.lock().unwrap() = Some(server.clone());
            let _ = tungstenite::connect(url(server, "/"));
        },
    );
    let slot: Arc<std::sync::Mutex<Option<Server>>> = Arc::default();
    let hook_slot = slot.clone();
    closed_from(
        Server::builder().on_disconnection(move |_| {
            if let Some(server) = hook_slot.lock().unwrap().clone() {
                server.close();
            }
        }),
        |server| {
            *slot.lock().unwrap() = Some(server.clone());
            let client = Raw::connect(&url(server, "/"));
            drop(client);
        },
    );
}

#[test]
fn the_longest_durations_mean_never_and_panic_nowhere() {
    let mut config = ServerConfig::default();
    config.handshake_timeout = Duration::MAX;
    config.close_timeout = Duration::MAX;
    config.slow_call_threshold = Duration::MAX;
    config.ping_interval = Some(Duration::MAX);
    config.peer_timeout = Some(Duration::MAX);
    config.session_ttl = Some(Duration::MAX);
    let server = Server::builder()
        .config(config)
        .bind("127.0.0.1:0")
        .unwrap();
    server.register("sum", |n: Vec<f64>, _| {
        Ok::<_, wsrpc::RpcError>(n.iter().sum::<f64>())
    });
    server.event("feed");
    let mut client = Raw::connect(&url(&server, "/"));
    assert_eq!(client.call("sum", json!([1, 2]))["result"], 3.0);
    assert_eq!(
        client.call("rpc.on", json!(["feed"]))["result"]["feed"],
        "ok"
    );
    server.emit("feed", [1]).unwrap();
    assert_eq!(client.recv()["params"], json!([1]));
    // Dropped without a close frame: its session is parked "for ever".
    let _ = client.tcp().shutdown(Shutdown::Both);
    assert!(common::wait_until(|| server.stats().connections == 0));
    assert!(within_deadline(move || server.close()).is_some());
}

#[test]
fn setup_runs_before_the_first_connection_is_accepted() {
    let (tx, rx) = crossbeam_channel::unbounded();
    let server = Server::builder()
        .on_connection(move |_| {
            let _ = tx.send(());
        })
        .setup(|server| {
            // A client knocks while the server is being set up: it waits in the
            // listen backlog until setup is over.
            let url = url(server, "/");
            thread::spawn(move || Raw::connect(&url));
            let watched = std::time::Instant::now();
            while watched.elapsed() < Duration::from_millis(200) {
                assert_eq!(server.stats().connections, 0, "accepted during setup");
                thread::sleep(Duration::from_millis(5));
            }
            server
                .register("ready", |_: (), _| Ok::<_, wsrpc::RpcError>(true))
                .protected();
        })
        .bind("127.0.0.1:0")
        .unwrap();
    assert!(
        rx.recv_timeout(DEADLINE).is_ok(),
        "the waiting client was never served"
    );
    let mut client = Raw::connect(&url(&server, "/"));
    assert_eq!(client.call("ready", Value::Null)["error"]["code"], -32605);
    server.close();
}

/// Counts the log lines that contain some text (a logger for this test binary).
struct CountingLogger;

static LOGGED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

impl log::Log for CountingLogger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        LOGGED.lock().unwrap().push(record.args().to_string());
    }
    fn flush(&self) {}
}

#[test]
fn a_client_refused_again_and_again_cannot_flood_the_log() {
    let _ = log::set_logger(&CountingLogger);
    log::set_max_level(log::LevelFilter::Warn);
    let mut config = ServerConfig::default();
    config.max_connections_per_ip = 1;
    let server = Server::builder()
        .config(config)
        .bind("127.0.0.1:0")
        .unwrap();
    let _held = Raw::connect(&url(&server, "/"));
    for _ in 0..100 {
        assert!(tungstenite::connect(url(&server, "/")).is_err());
    }
    assert!(common::wait_until(
        || server.stats().refused_per_address == 100
    ));
    let refusals = LOGGED
        .lock()
        .unwrap()
        .iter()
        .filter(|line| line.contains("max_connections_per_ip reached"))
        .count();
    assert!(
        (1..=10).contains(&refusals),
        "{refusals} log lines for 100 refused connections"
    );
    server.close();
}

#[test]
fn params_past_a_decoding_bound_are_refused_and_counted() {
    let server = Server::bind("127.0.0.1:0").unwrap();
    server.event("feed");
    let mut client = Raw::connect(&url(&server, "/"));
    let names = vec!["feed"; 1001];
    let reply = client.call("rpc.on", json!(names));
    assert_eq!(reply["error"]["code"], -32602, "{reply}");
    assert_eq!(server.stats().params_past_bounds, 1);
    // An ordinary refusal is not counted as one.
    assert_eq!(
        client.call("rpc.on", json!({"feed": 1}))["error"]["code"],
        -32602
    );
    assert_eq!(server.stats().params_past_bounds, 1);
    server.close();
}

#[test]
fn message_timeout_times_each_message_not_a_stream_whose_reads_straddle_them() {
    let mut config = ServerConfig::default();
    config.message_timeout = Some(Duration::from_millis(300));
    let server = Server::builder()
        .config(config)
        .bind("127.0.0.1:0")
        .unwrap();
    server.register("update", |_: Value, _| Ok::<_, wsrpc::RpcError>(()));
    let mut wire = common::Wire::connect(&server, "/");
    // Notifications of 1,029 bytes on the wire, each arriving in a few milliseconds,
    // sent in 1,000-byte writes: a read almost never ends where a message does.
    let filler = "x".repeat(1029 - 60);
    let text = format!(r#"{{"jsonrpc":"2.0","method":"update","params":["{filler}"]}}"#);
    let frame = common::ws_frame(common::OP_TEXT, true, text.as_bytes());
    let stream: Vec<u8> = frame
        .iter()
        .copied()
        .cycle()
        .take(frame.len() * 120)
        .collect();
    for chunk in stream.chunks(1000) {
        wire.send(chunk)
            .expect("the server cut a client whose messages were all quick");
        thread::sleep(Duration::from_millis(8));
    }
    assert_eq!(server.stats().messages_timed_out, 0);
    server.close();
}

#[test]
fn clients_that_stop_reading_do_not_hold_up_the_others_events() {
    let server = Server::bind("127.0.0.1:0").unwrap();
    server.event("feed");
    // Three subscribers that never read again, and one that does.
    let stalled = feed_subscribers(&server, 3);
    let mut healthy = feed_subscribers(&server, 1).remove(0);
    let event = "x".repeat(1 << 20);
    // 20 MiB to each: more than a loopback socket buffers, so writers serving the
    // stalled ones block (until peer_timeout, 40 s) while the healthy one waits.
    for _ in 0..20 {
        server.emit("feed", [&event]).unwrap();
    }
    for i in 0..20 {
        let got = healthy.recv();
        assert_eq!(
            got["params"][0].as_str().map(str::len),
            Some(1 << 20),
            "event {i}"
        );
    }
    drop(stalled);
    server.close();
}

#[test]
fn close_called_during_setup_closes_the_server_once_setup_ends() {
    let bound = within_deadline(|| {
        Server::builder()
            .setup(|server| server.close())
            .bind("127.0.0.1:0")
    });
    let server = bound.expect("bind() did not return").unwrap();
    assert!(within_deadline(move || server.wait()).is_some());
}

#[test]
fn waiting_on_the_dispatcher_ends_when_the_server_closes() {
    for _ in 0..50 {
        let server = Server::bind("127.0.0.1:0").unwrap();
        let asker = server.clone();
        let asking = thread::spawn(move || {
            for _ in 0..1000 {
                asker.clients();
            }
        });
        server.close();
        let joined = within_deadline(move || asking.join().is_ok());
        assert_eq!(joined, Some(true), "clients() never returned after close()");
    }
}
