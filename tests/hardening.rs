//! A default-configured server stays up, bounded and stoppable: no deadlock between
//! subscriptions and parked sessions, a cap on the threads a client can make the
//! server start, and a `close()` that returns whatever handlers do.

mod common;

use std::net::Shutdown;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use common::{DEADLINE, Raw, url};
use serde_json::json;
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
    for _ in 0..n {
        let mut raw = Raw::connect(&url(server, "/"));
        assert_eq!(raw.call("rpc.on", json!(["feed"]))["result"]["feed"], "ok");
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
