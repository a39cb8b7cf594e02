//! wss:// end to end: a TLS listener in the server and TLS in the client, with a
//! certificate made at test time (rcgen). No private key is committed anywhere.
#![cfg(feature = "tls")]

mod common;

use std::sync::{Arc, mpsc};

use common::DEADLINE;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use wsrpc::{Client, Error, Server};

struct Tls {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

/// A self-signed certificate for localhost, and configs that use and trust it, with
/// the ring provider chosen explicitly.
fn tls() -> Tls {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert: CertificateDer<'static> = made.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.signing_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Tls {
        server: Arc::new(server),
        client: Arc::new(client),
    }
}

fn start(tls: &Tls) -> Server {
    common::start_with(Server::builder().tls(tls.server.clone()))
}

fn wss(server: &Server, path: &str) -> String {
    format!("wss://localhost:{}{path}", server.local_addr().port())
}

/// A client of `server` that trusts the test certificate.
fn trusting(tls: &Tls, server: &Server) -> wsrpc::ClientBuilder {
    Client::builder(&wss(server, "/")).tls_config(tls.client.clone())
}

#[test]
fn calls_and_events_work_over_wss() {
    let tls = tls();
    let server = start(&tls);
    let client = trusting(&tls, &server).connect().unwrap();
    assert_eq!(client.call("sum", [5, 3]).unwrap(), json!(8));
    let (tx, events) = mpsc::channel();
    client
        .subscribe("newsUpdate", move |p| drop(tx.send(p.clone())))
        .unwrap();
    client
        .call("emit", json!(["newsUpdate", {"n": 1}]))
        .unwrap();
    assert_eq!(events.recv_timeout(DEADLINE).unwrap(), json!({"n": 1}));
    client.close();
    server.close();
}

#[test]
fn large_messages_cross_many_tls_records_both_ways() {
    let tls = tls();
    let server = start(&tls);
    for msgpack in [false, true] {
        let client = trusting(&tls, &server).msgpack(msgpack).connect().unwrap();
        let big = "x".repeat(1 << 20);
        let echoed = client.call("echo", json!([big])).unwrap();
        assert_eq!(echoed[0].as_str().map(str::len), Some(1 << 20));
        client.close();
    }
    server.close();
}

#[test]
fn events_and_calls_interleave_on_one_tls_connection() {
    let tls = tls();
    let server = start(&tls);
    let client = trusting(&tls, &server).connect().unwrap();
    let (tx, events) = mpsc::channel::<Value>();
    client
        .subscribe("newsUpdate", move |p| drop(tx.send(p.clone())))
        .unwrap();
    // The server writes events from its writer thread while the connection's reader
    // answers calls: both use the one TLS state.
    let emitter = {
        let server = server.clone();
        std::thread::spawn(move || {
            for n in 0..500 {
                server.emit("newsUpdate", json!({"n": n})).unwrap();
            }
        })
    };
    for n in 0..200 {
        assert_eq!(client.call("sum", [n, 1]).unwrap(), json!(n + 1));
    }
    emitter.join().unwrap();
    for n in 0..500 {
        assert_eq!(events.recv_timeout(DEADLINE).unwrap(), json!({"n": n}));
    }
    client.close();
    server.close();
}

#[test]
fn an_untrusted_certificate_is_refused() {
    let tls = tls();
    let server = start(&tls);
    // The default settings trust the public roots only.
    let refused = Client::builder(&wss(&server, "/"))
        .reconnect(false)
        .connect();
    assert!(refused.is_err(), "a self-signed certificate was trusted");
    // The server is unharmed.
    let client = trusting(&tls, &server).connect().unwrap();
    assert_eq!(client.call("sum", [1, 1]).unwrap(), json!(2));
    client.close();
    server.close();
}

#[test]
fn a_plain_client_cannot_talk_to_a_tls_server() {
    let tls = tls();
    let server = start(&tls);
    let plain = format!("ws://127.0.0.1:{}/", server.local_addr().port());
    let refused = Client::builder(&plain)
        .reconnect(false)
        .timeout(std::time::Duration::from_secs(2))
        .connect()
        .err();
    assert!(
        matches!(
            refused,
            Some(Error::Protocol(_) | Error::Io(_) | Error::ConnectionLost)
        ),
        "{refused:?}"
    );
    // The server lets the failed connection go (its thread ends soon after).
    assert!(common::wait_until(|| server.stats().connections == 0));
    assert!(server.stats().handshakes_failed >= 1);
    server.close();
}

#[test]
fn both_sides_writing_large_frames_at_once_do_not_stall() {
    // Megabytes each way at once: each side's writer may block on a full socket buffer
    // while the other side must still decrypt what it reads (and rustls holds at most
    // 16 KiB of decrypted data: one socket read can complete more than that).
    let tls = tls();
    let server = start(&tls);
    let client = trusting(&tls, &server).timeout(DEADLINE).connect().unwrap();
    let (tx, events) = mpsc::channel::<()>();
    client
        .subscribe("newsUpdate", move |_| {
            let _ = tx.send(());
        })
        .unwrap();
    let big = "e".repeat(512 << 10);
    let emitter = {
        let server = server.clone();
        let big = big.clone();
        std::thread::spawn(move || {
            for _ in 0..20 {
                server.emit("newsUpdate", json!([big])).unwrap();
            }
        })
    };
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let client = client.clone();
            let big = big.clone();
            std::thread::spawn(move || {
                for _ in 0..5 {
                    client.call("echo", json!([big])).unwrap();
                }
            })
        })
        .collect();
    for call in calls {
        call.join().expect("every large call was answered in time");
    }
    emitter.join().unwrap();
    for _ in 0..20 {
        events
            .recv_timeout(DEADLINE)
            .expect("every large event arrived");
    }
    client.close();
    server.close();
}

#[test]
fn a_wss_client_that_closes_sends_its_close_frame() {
    let tls = tls();
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let server = common::start_with(Server::builder().tls(tls.server.clone()).on_disconnection(
        move |info| {
            let _ = tx.lock().unwrap().send(info.code);
        },
    ));
    let client = trusting(&tls, &server).connect().unwrap();
    assert_eq!(client.call("sum", [5, 3]).unwrap(), json!(8));
    client.close();
    let code = rx.recv_timeout(DEADLINE).unwrap();
    assert_eq!(
        code, 1000,
        "the client's close frame did not reach the server"
    );
    server.close();
}
