//! A fan-out helper thread that panics (here in the application's logger, which it
//! calls when it cuts off a slow client) does not leave the dispatcher waiting for it.
//! Its own test binary: it installs a process-wide logger.

mod common;

use std::sync::mpsc;
use std::thread;

use common::{DEADLINE, Raw, url};
use serde_json::json;
use wsrpc::{Server, ServerConfig};

/// A logger that panics when called on a fan-out helper thread.
struct PanicsOnHelpers;

impl log::Log for PanicsOnHelpers {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::Level::Warn
    }

    fn log(&self, record: &log::Record) {
        if thread::current().name() == Some("wsrpc-fanout") {
            panic!("the application's logger panics: {}", record.args());
        }
    }

    fn flush(&self) {}
}

#[test]
fn a_helper_that_panics_does_not_hold_up_the_dispatcher() {
    log::set_logger(&PanicsOnHelpers).unwrap();
    log::set_max_level(log::LevelFilter::Warn);
    let mut config = ServerConfig::default();
    config.outgoing_queue = 1;
    let server = Server::builder()
        .config(config)
        .bind("127.0.0.1:0")
        .unwrap();
    server.event("feed");
    // Subscribers that never read: their sockets fill, then their queues, and the
    // helper that cuts them off logs it.
    let subscribers: Vec<Raw> = (0..260)
        .map(|_| {
            let mut raw = Raw::connect(&url(&server, "/"));
            assert_eq!(raw.call("rpc.on", json!(["feed"]))["result"]["feed"], "ok");
            raw
        })
        .collect();
    let big = "x".repeat(1 << 20);
    for _ in 0..12 {
        server.emit("feed", [&big]).unwrap();
    }
    let (tx, rx) = mpsc::channel();
    let asker = server.clone();
    thread::spawn(move || {
        let _ = tx.send(asker.clients().len());
    });
    assert!(
        rx.recv_timeout(DEADLINE).is_ok(),
        "the dispatcher waits for a helper that panicked: {:?}",
        server.stats()
    );
    drop(subscribers);
    server.close();
}
