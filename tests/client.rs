//! The blocking client against the fixture server: calls, errors, notifications,
//! subscriptions, login, namespaces, handshake options, sharing between threads, and
//! what happens when connections close, drop and come back.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{DEADLINE, url, wait_until};
use serde_json::{Value, json};
use wsrpc::{Client, CloseInfo, CloseKind, ConnectionInfo, Error, RpcError, Server};

/// How long to watch for something that must NOT happen (an event after unsubscribing,
/// a second close report, a reconnect attempt past the cap). Many times the intervals
/// involved, yet short enough to keep the suite fast.
const QUIET: Duration = Duration::from_millis(300);

/// An event callback that forwards every params value into a channel.
fn forwarder() -> (impl Fn(&Value) + Send + Sync + 'static, Receiver<Value>) {
    let (tx, rx) = mpsc::channel();
    (move |params: &Value| drop(tx.send(params.clone())), rx)
}

fn connect(server: &Server, path: &str) -> Client {
    Client::connect(&url(server, path)).expect("connect to the fixture server")
}

fn login(client: &Client) {
    let answer = client
        .login(json!({"username": "foo", "password": "bar"}))
        .expect("good credentials are accepted");
    assert_eq!(answer, json!(true));
}

fn rpc_code(result: Result<Value, Error>) -> i64 {
    match result {
        Err(Error::Rpc(e)) => e.code,
        other => panic!("expected an RPC error, got {other:?}"),
    }
}

/// A fixture server on exactly `addr`, retrying the bind until the port is free.
fn fixture_at(addr: SocketAddr) -> Server {
    let mut server = None;
    let bound = wait_until(|| {
        server = Server::bind(addr).ok();
        server.is_some()
    });
    assert!(bound, "could not bind {addr} again before the deadline");
    let server = server.unwrap();
    common::fixture::install(&server);
    server
}

#[test]
fn call_and_call_as_return_the_result() {
    let server = common::start();
    let client = connect(&server, "/");
    assert!(client.is_connected());

    assert_eq!(client.call("sum", [5, 3]).unwrap(), json!(8));
    assert_eq!(client.call_as::<i64>("sum", [1, 2, 3]).unwrap(), 6);
    let greeting: String = client.call_as("greet", json!({"name": "Ada"})).unwrap();
    assert_eq!(greeting, "Hello, Ada!");
    assert_eq!(
        client.call("echo", json!({"a": [1, "b"]})).unwrap(),
        json!({"a": [1, "b"]})
    );
    // A result of the wrong shape is a decoding error, not a panic.
    let wrong = client.call_as::<String>("sum", [5, 3]);
    assert!(matches!(wrong, Err(Error::Codec(_))), "{wrong:?}");

    client.close();
    server.close();
}

#[test]
fn call_timeout_gives_timeout_and_the_client_keeps_working() {
    let server = common::start();
    let client = connect(&server, "/");

    let started = Instant::now();
    let slow = client.call_timeout("sleep", [2000], Duration::from_millis(100));
    assert!(matches!(slow, Err(Error::Timeout)), "{slow:?}");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "the timeout took {:?}",
        started.elapsed()
    );

    // The same client, while the server still runs the slow handler.
    assert_eq!(client.call("sum", [2, 2]).unwrap(), json!(4));
    assert!(client.is_connected());
    // Not closing the server: close() would wait for the sleeping handler.
    client.close();
}

#[test]
fn error_replies_keep_code_message_and_data() {
    let server = common::start();
    let client = connect(&server, "/");

    match client.call("fail", ()) {
        Err(Error::Rpc(e)) => assert_eq!(
            e,
            RpcError {
                code: -32050,
                message: "Server error".into(),
                data: Some(json!("Server error details")),
            }
        ),
        other => panic!("expected Error::Rpc, got {other:?}"),
    }

    client.close();
    server.close();
}

#[test]
fn unknown_method_is_method_not_found() {
    let server = common::start();
    let client = connect(&server, "/");

    match client.call("noSuchMethod", [1]) {
        Err(Error::Rpc(e)) => {
            assert_eq!(e.code, -32601);
            assert_eq!(e.message, "Method not found");
        }
        other => panic!("expected Error::Rpc, got {other:?}"),
    }
    // The connection is still good afterwards.
    assert_eq!(client.call("sum", [1, 1]).unwrap(), json!(2));

    client.close();
    server.close();
}

#[test]
fn notify_runs_the_method() {
    let server = common::start();
    let client = connect(&server, "/");
    let (callback, events) = forwarder();
    client.subscribe("newMessage", callback).unwrap();

    client
        .notify(
            "emit",
            json!(["newMessage", {"text": "from a notification"}]),
        )
        .unwrap();
    let params = events.recv_timeout(DEADLINE).expect("the emitted event");
    assert_eq!(params, json!({"text": "from a notification"}));

    client.close();
    server.close();
}

#[test]
fn subscribe_callback_receives_the_params() {
    let server = common::start();
    let client = connect(&server, "/");
    let (callback, events) = forwarder();
    client.subscribe("newsUpdate", callback).unwrap();

    server
        .emit("newsUpdate", json!({"headline": "hi"}))
        .unwrap();
    assert_eq!(
        events.recv_timeout(DEADLINE).unwrap(),
        json!({"headline": "hi"})
    );
    server.emit("newsUpdate", json!([1, 2])).unwrap();
    assert_eq!(events.recv_timeout(DEADLINE).unwrap(), json!([1, 2]));
    // A scalar is sent wrapped in an array.
    server.emit("newsUpdate", 5).unwrap();
    assert_eq!(events.recv_timeout(DEADLINE).unwrap(), json!([5]));

    client.close();
    server.close();
}

#[test]
fn a_second_callback_on_the_same_event_also_gets_it() {
    let server = common::start();
    let client = connect(&server, "/");
    let (first, first_events) = forwarder();
    let (second, second_events) = forwarder();
    client.subscribe("newsUpdate", first).unwrap();
    client.subscribe("newsUpdate", second).unwrap();

    server.emit("newsUpdate", json!({"n": 1})).unwrap();
    assert_eq!(
        first_events.recv_timeout(DEADLINE).unwrap(),
        json!({"n": 1})
    );
    assert_eq!(
        second_events.recv_timeout(DEADLINE).unwrap(),
        json!({"n": 1})
    );
    // Each callback ran once for the one event.
    server.emit("newsUpdate", json!({"n": 2})).unwrap();
    assert_eq!(
        first_events.recv_timeout(DEADLINE).unwrap(),
        json!({"n": 2})
    );
    assert_eq!(
        second_events.recv_timeout(DEADLINE).unwrap(),
        json!({"n": 2})
    );

    client.close();
    server.close();
}

#[test]
fn unsubscribe_stops_delivery() {
    let server = common::start();
    let leaving = connect(&server, "/");
    let staying = connect(&server, "/");
    let (callback, leaving_news) = forwarder();
    leaving.subscribe("newsUpdate", callback).unwrap();
    let (callback, leaving_marker) = forwarder();
    leaving.subscribe("newMessage", callback).unwrap();
    let (callback, staying_news) = forwarder();
    staying.subscribe("newsUpdate", callback).unwrap();

    server.emit("newsUpdate", json!({"n": "before"})).unwrap();
    assert_eq!(
        leaving_news.recv_timeout(DEADLINE).unwrap(),
        json!({"n": "before"})
    );
    assert_eq!(
        staying_news.recv_timeout(DEADLINE).unwrap(),
        json!({"n": "before"})
    );

    leaving.unsubscribe("newsUpdate").unwrap();
    server.emit("newsUpdate", json!({"n": "after"})).unwrap();
    // A later event on the same connection: events reach one connection in the order
    // they were emitted, so once the marker is in, "after" would have been too.
    server.emit("newMessage", json!({"marker": true})).unwrap();

    assert_eq!(
        staying_news.recv_timeout(DEADLINE).unwrap(),
        json!({"n": "after"})
    );
    assert_eq!(
        leaving_marker.recv_timeout(DEADLINE).unwrap(),
        json!({"marker": true})
    );
    let late = leaving_news.try_recv();
    assert!(late.is_err(), "event after unsubscribe: {late:?}");

    leaving.close();
    staying.close();
    server.close();
}

#[test]
fn subscribing_to_an_unknown_event_is_a_subscribe_error() {
    let server = common::start();
    let client = connect(&server, "/");

    match client.subscribe("noSuchEvent", |_| {}) {
        Err(Error::Subscribe { event, reason }) => {
            assert_eq!(event, "noSuchEvent");
            assert_eq!(reason, "provided event invalid");
        }
        other => panic!("expected Error::Subscribe, got {other:?}"),
    }
    assert!(client.is_connected());

    client.close();
    server.close();
}

#[test]
fn a_protected_event_before_login_is_event_forbidden() {
    let server = common::start();
    let client = connect(&server, "/");

    match client.subscribe("secretFeed", |_| {}) {
        Err(Error::Rpc(e)) => {
            assert_eq!(e.code, -32606);
            assert_eq!(e.message, "Event forbidden");
        }
        other => panic!("expected Error::Rpc -32606, got {other:?}"),
    }
    // The refusal left nothing behind: after login, subscribing asks the server again
    // and the events arrive.
    login(&client);
    let (callback, events) = forwarder();
    client.subscribe("secretFeed", callback).unwrap();
    server.emit("secretFeed", json!({"s": 1})).unwrap();
    assert_eq!(events.recv_timeout(DEADLINE).unwrap(), json!({"s": 1}));

    client.close();
    server.close();
}

#[test]
fn login_with_good_params_unlocks_protected_methods() {
    let server = common::start();
    let client = connect(&server, "/");

    assert_eq!(rpc_code(client.call("cryptic", ())), -32605);
    login(&client);
    assert_eq!(client.call("cryptic", ()).unwrap(), json!("boohoo"));

    client.close();
    server.close();
}

#[test]
fn login_with_bad_params_is_auth_failed() {
    let server = common::start();
    let client = connect(&server, "/");

    let bad = client.login(json!({"username": "foo", "password": "wrong"}));
    assert!(matches!(bad, Err(Error::AuthFailed)), "{bad:?}");
    assert_eq!(rpc_code(client.call("cryptic", ())), -32605);

    client.close();
    server.close();
}

#[test]
fn list_methods_names_the_namespace_methods() {
    let server = common::start();
    let client = connect(&server, "/");

    let methods = client.list_methods().unwrap();
    common::assert_lists_methods(
        &methods,
        &[
            "sum",
            "greet",
            "subtract",
            "echo",
            "sleep",
            "whoami",
            "fail",
            "cryptic",
            "emit",
            "rpc.login",
            "__listMethods",
        ],
    );

    let chat = connect(&server, "/chat");
    let mut chat_methods = chat.list_methods().unwrap();
    chat_methods.sort();
    assert_eq!(chat_methods, ["__listMethods", "sum"]);

    client.close();
    chat.close();
    server.close();
}

#[test]
fn namespaces_have_their_own_methods() {
    let server = common::start();
    let chat = connect(&server, "/chat");

    assert_eq!(chat.call("sum", [20, 22]).unwrap(), json!(42));
    assert_eq!(rpc_code(chat.call("cryptic", ())), -32601);
    // And their own events.
    let (callback, events) = forwarder();
    chat.subscribe("chatMessage", callback).unwrap();
    server
        .namespace("/chat")
        .emit("chatMessage", json!({"m": 1}))
        .unwrap();
    assert_eq!(events.recv_timeout(DEADLINE).unwrap(), json!({"m": 1}));

    chat.close();
    server.close();
}

#[test]
fn socket_id_option_is_the_connection_id() {
    let server = common::start();
    let id = "my client/1 é";
    let client = Client::builder(&url(&server, "/"))
        .socket_id(id)
        .connect()
        .unwrap();

    assert_eq!(client.call("whoami", ()).unwrap(), json!(id));
    assert!(server.clients().iter().any(|c| c == id));

    client.close();
    server.close();
}

#[test]
fn extra_header_reaches_the_server() {
    let (tx, rx) = mpsc::channel::<ConnectionInfo>();
    let tx = Mutex::new(tx);
    let server = common::start_with(Server::builder().on_connection(move |info| {
        let _ = tx.lock().unwrap().send(info.clone());
    }));
    let client = Client::builder(&url(&server, "/chat"))
        .header("X-Api-Key", "s3cret")
        .connect()
        .unwrap();

    let info = rx.recv_timeout(DEADLINE).expect("on_connection ran");
    assert_eq!(info.header("x-api-key"), Some("s3cret"));
    assert_eq!(info.namespace, "/chat");

    client.close();
    server.close();
}

#[test]
fn many_threads_share_one_client_and_replies_match_calls() {
    const THREADS: usize = 8;
    const CALLS: usize = 200;
    let server = common::start();
    let client = connect(&server, "/");

    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let client = client.clone();
            std::thread::spawn(move || {
                for i in 0..CALLS {
                    let params = json!([t, i, format!("{t}-{i}")]);
                    let reply = client.call("echo", &params).unwrap();
                    assert_eq!(reply, params, "thread {t} call {i}");
                    let sum: usize = client.call_as("sum", [t, i]).unwrap();
                    assert_eq!(sum, t + i, "thread {t} call {i}");
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("a worker thread failed");
    }

    client.close();
    server.close();
}

#[test]
fn client_is_send_sync_and_clone() {
    fn assert_send_sync_clone<T: Send + Sync + Clone + 'static>() {}
    assert_send_sync_clone::<Client>();
}

#[test]
fn pending_calls_fail_at_once_when_the_connection_drops() {
    let server = common::start();
    // `sleep` that also says when it has started, so the namespace is closed only
    // while the call is surely pending.
    let (started_tx, started_rx) = mpsc::channel::<()>();
    let started_tx = Mutex::new(started_tx);
    server.register("signalledSleep", move |(ms,): (u64,), _| {
        let _ = started_tx.lock().unwrap().send(());
        std::thread::sleep(Duration::from_millis(ms));
        Ok(ms)
    });
    let client = connect(&server, "/");

    let caller = {
        let client = client.clone();
        std::thread::spawn(move || {
            let outcome = client.call_timeout("signalledSleep", [5000], DEADLINE);
            (outcome, Instant::now())
        })
    };
    started_rx
        .recv_timeout(DEADLINE)
        .expect("the handler started");
    let closed_at = Instant::now();
    server.namespace("/").close();

    let (outcome, failed_at) = caller.join().unwrap();
    assert!(matches!(outcome, Err(Error::ConnectionLost)), "{outcome:?}");
    let waited = failed_at.duration_since(closed_at);
    assert!(
        waited < Duration::from_secs(2),
        "the call failed only after {waited:?}"
    );
    // Not closing the server: close() would wait for the sleeping handler.
    client.close();
}

#[test]
fn after_close_calls_fail_closed_and_on_close_reports_1000_once() {
    let server = common::start();
    let (tx, closes) = mpsc::channel::<CloseInfo>();
    let tx = Mutex::new(tx);
    let client = Client::builder(&url(&server, "/"))
        .on_close(move |info| {
            let _ = tx.lock().unwrap().send(info.clone());
        })
        .connect()
        .unwrap();
    assert_eq!(client.call("sum", [1, 2]).unwrap(), json!(3));

    client.close();
    let call = client.call("sum", [1, 2]);
    assert!(matches!(call, Err(Error::Closed)), "{call:?}");
    let note = client.notify("sum", [1, 2]);
    assert!(matches!(note, Err(Error::Closed)), "{note:?}");
    assert!(!client.is_connected());

    let info = closes.recv_timeout(DEADLINE).expect("on_close ran");
    assert_eq!(info.code, 1000);
    assert!(!info.reconnecting, "{info:?}");
    assert!(
        matches!(closes.recv_timeout(QUIET), Err(RecvTimeoutError::Timeout)),
        "on_close ran twice"
    );
    // Closing again does nothing.
    client.close();
    server.close();
}

#[test]
fn on_open_runs_on_connect() {
    let server = common::start();
    let (tx, opens) = mpsc::channel::<()>();
    let tx = Mutex::new(tx);
    let client = Client::builder(&url(&server, "/"))
        .on_open(move || {
            let _ = tx.lock().unwrap().send(());
        })
        .connect()
        .unwrap();

    opens.recv_timeout(DEADLINE).expect("on_open ran");

    client.close();
    server.close();
}

#[test]
fn reconnect_restores_subscriptions_and_login() {
    let server = common::start();
    let addr = server.local_addr();
    let opens = Arc::new(AtomicUsize::new(0));
    let (close_tx, closes) = mpsc::channel::<CloseInfo>();
    let close_tx = Mutex::new(close_tx);
    let client = Client::builder(&url(&server, "/"))
        .reconnect_interval(Duration::from_millis(50))
        .max_reconnects(0)
        .on_open({
            let opens = opens.clone();
            move || {
                opens.fetch_add(1, Ordering::SeqCst);
            }
        })
        .on_close(move |info| {
            let _ = close_tx.lock().unwrap().send(info.clone());
        })
        .connect()
        .unwrap();
    let (callback, news) = forwarder();
    client.subscribe("newsUpdate", callback).unwrap();
    login(&client);
    assert!(wait_until(|| opens.load(Ordering::SeqCst) == 1));

    server.close();
    let info = closes.recv_timeout(DEADLINE).expect("on_close ran");
    assert_eq!(info.code, 1001, "{info:?}");
    assert!(info.reconnecting, "{info:?}");

    let server = fixture_at(addr);
    assert!(wait_until(|| client.is_connected()), "no reconnect");
    // on_open runs once login and subscriptions are restored.
    assert!(
        wait_until(|| opens.load(Ordering::SeqCst) == 2),
        "on_open did not run after the reconnect"
    );

    assert_eq!(client.call("cryptic", ()).unwrap(), json!("boohoo"));
    server
        .emit("newsUpdate", json!({"after": "reconnect"}))
        .unwrap();
    assert_eq!(
        news.recv_timeout(DEADLINE).unwrap(),
        json!({"after": "reconnect"})
    );

    client.close();
    server.close();
}

#[test]
fn max_reconnects_caps_the_attempts() {
    let server = common::start();
    let (close_tx, closes) = mpsc::channel::<CloseInfo>();
    let close_tx = Mutex::new(close_tx);
    let (error_tx, errors) = mpsc::channel::<String>();
    let error_tx = Mutex::new(error_tx);
    let client = Client::builder(&url(&server, "/"))
        .reconnect_interval(Duration::from_millis(20))
        .max_reconnects(1)
        .on_close(move |info| {
            let _ = close_tx.lock().unwrap().send(info.clone());
        })
        .on_error(move |e| {
            let _ = error_tx.lock().unwrap().send(e.to_string());
        })
        .connect()
        .unwrap();

    server.close();
    let info = closes.recv_timeout(DEADLINE).expect("on_close ran");
    assert_eq!(info.kind, CloseKind::Lost);
    assert!(info.reconnecting, "{info:?}");
    // The one allowed attempt fails (nothing listens any more), reported once...
    errors.recv_timeout(DEADLINE).expect("the failed reconnect");
    let failed = closes
        .recv_timeout(DEADLINE)
        .expect("on_close for the attempt");
    assert_eq!((failed.kind, failed.retries), (CloseKind::Unreachable, 1));
    assert!(!failed.reconnecting, "{failed:?}");
    // ...and no other follows, though the interval passes many times over.
    assert_eq!(errors.recv_timeout(QUIET), Err(RecvTimeoutError::Timeout));
    assert!(matches!(closes.try_recv(), Err(mpsc::TryRecvError::Empty)));
    assert!(!client.is_connected());
    let call = client.call("sum", [1, 1]);
    assert!(matches!(call, Err(Error::NotConnected)), "{call:?}");

    client.close();
}

#[test]
fn autoconnect_false_waits_for_open() {
    let (tx, connections) = mpsc::channel::<String>();
    let tx = Mutex::new(tx);
    let server = common::start_with(Server::builder().on_connection(move |info| {
        let _ = tx.lock().unwrap().send(info.socket_id.clone());
    }));
    let client = Client::builder(&url(&server, "/"))
        .autoconnect(false)
        .build();

    assert!(!client.is_connected());
    let call = client.call("sum", [1, 1]);
    assert!(matches!(call, Err(Error::NotConnected)), "{call:?}");
    assert_eq!(
        connections.recv_timeout(QUIET),
        Err(RecvTimeoutError::Timeout),
        "the client connected without open()"
    );

    client.open().unwrap();
    assert!(client.is_connected());
    connections
        .recv_timeout(DEADLINE)
        .expect("the server saw the connection");
    assert_eq!(client.call("sum", [1, 1]).unwrap(), json!(2));
    // Opening an open client does nothing.
    client.open().unwrap();

    client.close();
    server.close();
}

#[test]
fn connect_to_a_closed_port_fails_quickly() {
    let addr = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let started = Instant::now();
    let outcome = Client::builder(&format!("ws://{addr}/"))
        .timeout(DEADLINE)
        .connect();
    let took = started.elapsed();
    let error = outcome.expect_err("nothing listens there");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    // The error of the attempt, as it was: a refused TCP connection.
    assert!(
        matches!(&error, Error::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
        "{error:?}"
    );
}

#[test]
fn close_during_a_stalled_handshake_returns_promptly() {
    // A listener that accepts and never answers the handshake.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let client = Client::builder(&format!("ws://{addr}"))
        .timeout(Duration::from_secs(60))
        .build();
    let (_socket, _) = listener.accept().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        client.close();
        let _ = tx.send(());
    });
    assert!(
        rx.recv_timeout(DEADLINE).is_ok(),
        "close() hung behind the connection attempt"
    );
}

#[test]
fn open_after_close_fails_at_once() {
    let server = common::start();
    let client = connect(&server, "/");
    client.close();
    assert!(matches!(client.open(), Err(Error::Closed)));
    assert!(matches!(client.call("sum", [1]), Err(Error::Closed)));
    server.close();
}

#[test]
fn an_address_without_a_scheme_is_refused_with_a_reason() {
    let err = Client::connect("127.0.0.1:9/").unwrap_err();
    assert!(matches!(err, Error::InvalidUrl(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("scheme is missing") && text.contains("ws://127.0.0.1:9/"),
        "{text}"
    );
    let err = Client::connect("http://127.0.0.1:9/").unwrap_err();
    assert!(err.to_string().contains("ws:// or wss://"), "{err}");
}
