//! How events reach subscribers: written by the emitting side without waiting while
//! a subscriber keeps up (no writer thread at all), handed to a writer thread only
//! for a subscriber whose socket is full, and a subscriber that stops reading is cut
//! off by the outgoing-queue bound (1008) while everyone else keeps receiving.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::Duration;

use common::{DEADLINE, Raw, feed_subscribers, peak_of, url, wait_until};
use serde_json::json;
use tungstenite::Message;
use wsrpc::{Server, ServerConfig};

#[test]
fn events_to_subscribers_with_room_start_no_writer_thread() {
    let server = Server::bind("127.0.0.1:0").unwrap();
    server.event("feed");
    let mut subscribers = feed_subscribers(&server, 200);
    let stop = Arc::new(AtomicBool::new(false));
    let peak = peak_of(&server, |s| s.writer_threads, &stop);
    // Nobody reads until every event is out: 20 small frames fit any socket buffer.
    for i in 0..20 {
        server.emit("feed", [i]).unwrap();
    }
    for raw in &mut subscribers {
        for i in 0..20 {
            assert_eq!(raw.recv()["params"], json!([i]), "lost or out of order");
        }
    }
    stop.store(true, Ordering::SeqCst);
    let peak = peak.join().unwrap();
    let stats = server.stats();
    assert_eq!(
        (peak, stats.writes_handed_over),
        (0, 0),
        "writer threads started, or writes handed over, for subscribers with room"
    );
    server.close();
}

#[test]
fn a_stalled_subscriber_is_cut_off_by_the_queue_bound_and_the_others_keep_receiving() {
    const EVENTS: u64 = 400;
    const READERS: usize = 8;
    let mut config = ServerConfig::default();
    config.outgoing_queue = 16;
    let server = Server::builder()
        .config(config)
        .bind("127.0.0.1:0")
        .unwrap();
    server.event("feed");
    // It never reads: the kernel's buffers fill, then its queue, then it is cut.
    let mut stalled = Raw::connect(&url(&server, "/?socket_id=stalled"));
    assert_eq!(
        stalled.call("rpc.on", json!(["feed"]))["result"]["feed"],
        "ok"
    );
    let (got_tx, got_rx) = mpsc::channel();
    for (n, mut raw) in feed_subscribers(&server, READERS).into_iter().enumerate() {
        let got = got_tx.clone();
        thread::spawn(move || {
            for i in 0..EVENTS {
                let event = raw.recv();
                if event["params"][0] != json!(i) {
                    let _ = got.send(Err(format!("reader {n}: {event} for event {i}")));
                    return;
                }
            }
            let _ = got.send(Ok(n));
        });
    }
    let payload = "x".repeat(32 << 10);
    for i in 0..EVENTS {
        server.emit("feed", (i, &payload)).unwrap();
    }
    for _ in 0..READERS {
        let done = got_rx
            .recv_timeout(DEADLINE)
            .expect("a reader got every event in time");
        done.unwrap();
    }
    assert!(
        wait_until(|| server.stats().slow_clients_dropped == 1),
        "the stalled subscriber was not cut off: {:?}",
        server.stats()
    );
    assert!(wait_until(|| !server
        .clients()
        .contains(&"stalled".to_owned())));
    assert!(
        server.stats().writes_handed_over > 0,
        "the stalled subscriber's socket never filled"
    );
    // What it was sent before the cut, then the end of the connection (no close
    // frame: the server dropped it).
    let mut read = 0;
    loop {
        match stalled.ws.read() {
            Ok(Message::Text(_)) => read += 1,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert!(
        (read as u64) < EVENTS,
        "the stalled subscriber got all {read} events"
    );
    server.close();
}

#[test]
fn a_clients_reply_does_not_wait_for_a_writer_busy_with_another_client() {
    let mut config = ServerConfig::default();
    config.max_writer_threads = 1;
    config.outgoing_queue = 100_000;
    config.ping_interval = None;
    config.peer_timeout = Some(Duration::from_secs(8));
    let server = Server::builder()
        .config(config)
        .bind("127.0.0.1:0")
        .unwrap();
    server.event("stall");
    server.event("feed");
    let payload = "x".repeat(256 << 10);
    // The only writer thread blocks on a client that never reads.
    let mut stalled = Raw::connect(&url(&server, "/"));
    assert_eq!(
        stalled.call("rpc.on", json!(["stall"]))["result"]["stall"],
        "ok"
    );
    for i in 0..100 {
        server.emit("stall", (i, &payload)).unwrap();
    }
    assert!(wait_until(|| server.stats().writes_handed_over == 1));
    // Another client's socket fills while it is busy: its queue waits for a writer.
    let mut busy = Raw::connect(&url(&server, "/"));
    assert_eq!(busy.call("rpc.on", json!(["feed"]))["result"]["feed"], "ok");
    for i in 0..100 {
        server.emit("feed", (i, &payload)).unwrap();
    }
    assert!(wait_until(|| server.stats().writes_handed_over == 2));
    // It reads again and asks something: its reply comes behind its events, written
    // by its own thread, long before the stalled client's peer_timeout.
    let started = std::time::Instant::now();
    busy.send_text(r#"{"jsonrpc":"2.0","method":"rpc.on","params":["feed"],"id":7}"#);
    let mut events = 0;
    while busy.recv().get("id").is_none() {
        events += 1;
    }
    let took = started.elapsed();
    assert_eq!(events, 100);
    assert!(
        took < Duration::from_secs(4),
        "the reply waited {took:?} for the writer blocked on another client"
    );
    drop(stalled);
    server.close();
}

#[test]
fn an_event_to_many_subscribers_is_written_by_a_few_threads_and_arrives_in_order() {
    let server = Server::bind("127.0.0.1:0").unwrap();
    server.event("feed");
    let mut subscribers = feed_subscribers(&server, 600);
    for i in 0..30 {
        server.emit("feed", [i]).unwrap();
    }
    for raw in &mut subscribers {
        for i in 0..30 {
            assert_eq!(raw.recv()["params"], json!([i]), "lost or out of order");
        }
    }
    let stats = server.stats();
    let cores = thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(
        stats.fanout_threads,
        cores.clamp(1, 4) - 1,
        "one helper per core but the dispatcher's, at most three"
    );
    assert_eq!(stats.writes_handed_over, 0);
    server.close();
}
