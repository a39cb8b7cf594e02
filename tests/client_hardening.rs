//! The client under conditions a server or network can impose: a callback that cannot
//! keep up, a server that stops reading, a connect that hangs, durations at their
//! largest, refused handshakes; and what the client shows of itself (`Debug`, error
//! sources, the resume token's place in the handshake).

mod common;

use std::error::Error as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{DEADLINE, Proxy, url, wait_until};
use serde_json::{Value, json};
use tungstenite::handshake::server::{Request, Response};
use tungstenite::http::HeaderValue;
use wsrpc::{Client, Error, RpcError, Server, ServerConfig};

fn login(client: &Client) {
    let answer = client
        .login(json!({"username": "foo", "password": "bar"}))
        .expect("good credentials are accepted");
    assert_eq!(answer, json!(true));
}

/// An event callback that blocks in its first call until `release` is dropped or sent
/// to, and counts its calls.
struct Gate {
    entered: Arc<AtomicUsize>,
    release: mpsc::Sender<()>,
}

fn gated_callback() -> (Gate, impl Fn(&Value) + Send + Sync + 'static) {
    let entered = Arc::new(AtomicUsize::new(0));
    let (release, held) = mpsc::channel::<()>();
    let held = Mutex::new(held);
    let count = entered.clone();
    let callback = move |_: &Value| {
        if count.fetch_add(1, Ordering::SeqCst) == 0 {
            let _ = held.lock().unwrap().recv_timeout(Duration::from_secs(60));
        }
    };
    (Gate { entered, release }, callback)
}

#[test]
fn a_full_callback_queue_drops_new_events_counts_them_and_tells_on_error() {
    const CAPACITY: usize = 8;
    const FLOOD: usize = 300;
    let server = common::start();
    let reported = Arc::new(AtomicU64::new(0));
    let client = Client::builder(&url(&server, "/"))
        .callback_queue(CAPACITY)
        .on_error({
            let reported = reported.clone();
            move |e| {
                if let Error::EventsDropped { dropped, .. } = e {
                    reported.fetch_add(*dropped, Ordering::SeqCst);
                }
            }
        })
        .connect()
        .unwrap();
    let (gate, callback) = gated_callback();
    client.subscribe("newsUpdate", callback).unwrap();

    // The first event holds the callback thread; the flood finds the queue full.
    server.emit("newsUpdate", json!(0)).unwrap();
    assert!(wait_until(|| gate.entered.load(Ordering::SeqCst) == 1));
    for n in 1..=FLOOD {
        server.emit("newsUpdate", json!(n)).unwrap();
    }
    let dropped = (FLOOD - CAPACITY) as u64;
    assert!(
        wait_until(|| client.dropped_events() == dropped),
        "dropped {} of {FLOOD}, expected {dropped}",
        client.dropped_events()
    );

    // Once the callback returns, the queued events run, and on_error hears of the rest.
    drop(gate.release);
    assert!(wait_until(
        || gate.entered.load(Ordering::SeqCst) == 1 + CAPACITY
    ));
    assert!(wait_until(|| reported.load(Ordering::SeqCst) == dropped));
    // The client carries on: new events get through.
    server.emit("newsUpdate", json!("after")).unwrap();
    assert!(wait_until(
        || gate.entered.load(Ordering::SeqCst) == 2 + CAPACITY
    ));
    assert_eq!(client.dropped_events(), dropped);
    assert!(format!("{client:?}").contains(&format!("dropped_events: {dropped}")));
    client.close();
    server.close();
}

#[test]
fn restoring_after_a_reconnect_does_not_wait_behind_a_slow_callback() {
    let server = common::start();
    let proxy = Proxy::to(&server);
    let client = Client::builder(&proxy.url("/"))
        .initial_retry_delay(Duration::from_millis(10))
        .retry_delay_jitter(0.0)
        .connect()
        .unwrap();
    login(&client);
    let (gate, callback) = gated_callback();
    client.subscribe("newsUpdate", callback).unwrap();
    server.emit("newsUpdate", json!(1)).unwrap();
    assert!(wait_until(|| gate.entered.load(Ordering::SeqCst) == 1));

    // The callback thread is stuck; the connection drops and comes back.
    proxy.cut_all();
    assert!(wait_until(|| proxy.accepted() == 2), "no reconnect");
    assert!(
        wait_until(|| client.is_connected()),
        "the restore waited behind the event callback"
    );
    // Logged in again: the protected method answers.
    assert_eq!(client.call("cryptic", ()).unwrap(), json!("boohoo"));
    drop(gate.release);
    client.close();
    server.close();
}

/// A WebSocket server on loopback that completes one handshake and then never reads.
fn deaf_server() -> (String, mpsc::Receiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (done_tx, done_rx) = mpsc::channel();
    thread::spawn(move || {
        let (socket, _) = listener.accept().unwrap();
        let _ws = tungstenite::accept(socket).unwrap();
        // Hold the connection open, reading nothing, until the test ends.
        let _ = done_tx.send(());
        thread::sleep(Duration::from_secs(30));
    });
    (format!("ws://{addr}/"), done_rx)
}

#[test]
fn a_call_blocked_on_a_server_that_stopped_reading_returns_within_the_timeout() {
    let (url, accepted) = deaf_server();
    let timeout = Duration::from_millis(300);
    // The default peer timeout (40 s) is far longer than the call timeout.
    let client = Client::builder(&url)
        .timeout(timeout)
        .reconnect(false)
        .connect()
        .unwrap();
    accepted.recv_timeout(DEADLINE).unwrap();
    // Each call sends 1 MiB and gets no reply; once the socket buffers are full, a
    // send blocks: that call too must end within its timeout, and the connection is
    // then cut.
    let chunk = "x".repeat(1 << 20);
    let mut timeouts = 0;
    let ended = loop {
        let started = Instant::now();
        let outcome = client.call("echo", [&chunk]);
        let took = started.elapsed();
        assert!(
            took < timeout * 2 + Duration::from_secs(2),
            "call {timeouts} took {took:?} with a {timeout:?} timeout"
        );
        match outcome {
            Err(Error::Timeout) => timeouts += 1,
            other => break other,
        }
        assert!(timeouts < 200, "the sends never blocked");
    };
    assert!(
        matches!(ended, Err(Error::NotConnected | Error::ConnectionLost)),
        "{ended:?}"
    );
    assert!(timeouts > 1, "{timeouts}");
    client.close();
}

/// Whether this process has a TCP socket in SYN_SENT towards `port` on loopback.
fn syn_sent_to(port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let remote = format!("0100007F:{port:04X}");
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() > 3 && fields[2] == remote && fields[3] == "02"
    })
}

/// A listener whose accept backlog is full: a new TCP connect to it hangs.
fn full_backlog() -> (TcpListener, Vec<TcpStream>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut filled = Vec::new();
    while let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
        filled.push(s);
        assert!(filled.len() < 10_000, "the backlog never filled");
    }
    (listener, filled)
}

#[test]
fn close_and_drop_return_promptly_while_the_tcp_connect_hangs() {
    let (listener, _filled) = full_backlog();
    let addr = listener.local_addr().unwrap();
    for how in ["close", "drop"] {
        let client = Client::builder(&format!("ws://{addr}/"))
            .timeout(Duration::from_secs(60))
            .build();
        assert!(
            wait_until(|| syn_sent_to(addr.port())),
            "the client never started connecting"
        );
        let (tx, rx) = mpsc::channel();
        let started = Instant::now();
        thread::spawn(move || {
            match how {
                "close" => client.close(),
                _ => drop(client),
            }
            let _ = tx.send(());
        });
        assert!(
            rx.recv_timeout(DEADLINE).is_ok(),
            "{how} hung behind the TCP connect"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{how} took {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn close_answers_a_waiting_open_while_the_tcp_connect_hangs() {
    let (listener, _filled) = full_backlog();
    let addr = listener.local_addr().unwrap();
    let client = Client::builder(&format!("ws://{addr}/"))
        .timeout(Duration::from_secs(60))
        .autoconnect(false)
        .build();
    let (tx, rx) = mpsc::channel();
    let opener = client.clone();
    thread::spawn(move || {
        let _ = tx.send(opener.open());
    });
    assert!(
        wait_until(|| syn_sent_to(addr.port())),
        "the client never started connecting"
    );
    client.close();
    let opened = rx
        .recv_timeout(DEADLINE)
        .expect("open() hung after close()");
    assert!(matches!(opened, Err(Error::Closed)), "{opened:?}");
}

#[test]
fn duration_max_in_every_setting_works() {
    let server = common::start();
    let proxy = Proxy::to(&server);
    let closes = Arc::new(Mutex::new(Vec::new()));
    let client = Client::builder(&proxy.url("/"))
        .timeout(Duration::MAX)
        .initial_retry_delay(Duration::MAX)
        .max_retry_delay(Duration::MAX)
        .ping_interval(Some(Duration::MAX))
        .peer_timeout(Some(Duration::MAX))
        .wait_while_reconnecting(true)
        .on_close({
            let closes = closes.clone();
            move |c| closes.lock().unwrap().push(c.next_delay)
        })
        .connect()
        .unwrap();
    assert_eq!(client.call("sum", [1, 2]).unwrap(), json!(3));
    assert_eq!(
        client.call_timeout("sum", [2, 2], Duration::MAX).unwrap(),
        json!(4)
    );
    client.notify("update", [1]).unwrap();
    login(&client);
    client.subscribe("newsUpdate", |_| {}).unwrap();

    // A drop: the next retry is Duration::MAX away, that is never.
    proxy.cut_all();
    assert!(wait_until(|| closes.lock().unwrap().len() == 1));
    assert!(closes.lock().unwrap()[0].is_some());
    // The I/O thread is alive: `open` connects at once, and calls work again.
    let (tx, rx) = mpsc::channel();
    let opener = client.clone();
    thread::spawn(move || {
        let _ = tx.send(opener.open());
    });
    let opened = rx.recv_timeout(DEADLINE).expect("open() hung");
    assert!(opened.is_ok(), "{opened:?}");
    assert_eq!(client.call("cryptic", ()).unwrap(), json!("boohoo"));

    // `reconnect_interval` is the same setting, and `call_timeout` on a dropped one.
    let other = Client::builder(&url(&server, "/"))
        .reconnect_interval(Duration::MAX)
        .timeout(Duration::MAX)
        .connect()
        .unwrap();
    assert_eq!(other.call("sum", [5]).unwrap(), json!(5));
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        client.close();
        other.close();
        let _ = tx.send(());
    });
    assert!(rx.recv_timeout(DEADLINE).is_ok(), "close hung");
    server.close();
}

#[test]
#[allow(clippy::result_large_err)] // tungstenite's handshake callback signature
fn the_session_token_is_offered_in_a_header_not_in_the_url() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen_tx, seen_rx) = mpsc::channel::<(String, Option<String>)>();
    thread::spawn(move || {
        for n in 0..2 {
            let Ok((socket, _)) = listener.accept() else {
                return;
            };
            let seen = seen_tx.clone();
            let ws = tungstenite::accept_hdr(socket, move |req: &Request, mut resp: Response| {
                let resume = req
                    .headers()
                    .get("x-wsrpc-resume")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let _ = seen.send((req.uri().to_string(), resume));
                resp.headers_mut()
                    .insert("x-wsrpc-session", HeaderValue::from_static("secret-token"));
                Ok(resp)
            });
            // The first connection drops at once, without a close frame.
            if n == 0 {
                drop(ws);
            } else {
                thread::sleep(Duration::from_secs(5));
            }
        }
    });
    let client = Client::builder(&format!("ws://{addr}/"))
        .initial_retry_delay(Duration::from_millis(10))
        .build();
    let (first_uri, first_resume) = seen_rx.recv_timeout(DEADLINE).unwrap();
    assert_eq!(first_resume, None);
    assert!(!first_uri.contains("resume"), "{first_uri}");
    let (uri, resume) = seen_rx.recv_timeout(DEADLINE).expect("no reconnect");
    assert_eq!(resume.as_deref(), Some("secret-token"));
    assert!(!uri.contains("resume") && !uri.contains("secret"), "{uri}");
    client.close();
}

#[test]
fn debug_output_names_options_but_no_header_values_or_query() {
    let builder = Client::builder("ws://127.0.0.1:1/chat?token=hunter2")
        .header("Authorization", "Bearer hunter2")
        .socket_id("me")
        .timeout(Duration::from_secs(3));
    let text = format!("{builder:?}");
    assert!(text.contains("Authorization"), "{text}");
    assert!(text.contains("3s"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    let client = builder.autoconnect(false).build();
    let text = format!("{client:?}");
    assert!(text.contains("ws://127.0.0.1:1/chat"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    client.close();
    // Every public type of the client and the errors can be printed.
    let _ = format!("{:?} {:?}", Error::Timeout, RpcError::server("x"));
}

/// A listener that answers every HTTP request with `status`.
fn http_refuser(status: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for socket in listener.incoming() {
            let Ok(mut socket) = socket else { return };
            let mut head = [0u8; 4096];
            let _ = socket.read(&mut head);
            let _ = write!(
                socket,
                "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    format!("ws://{addr}/")
}

#[test]
fn a_refused_handshake_tells_its_http_status() {
    let mut config = ServerConfig::default();
    config.refuse_unknown_namespaces = true;
    let server = common::start_with(Server::builder().config(config));
    let error = Client::builder(&url(&server, "/nowhere"))
        .reconnect(false)
        .connect()
        .unwrap_err();
    assert_eq!(error.http_status(), Some(404), "{error:?}");
    assert!(
        matches!(error, Error::Refused { status: 404, .. }),
        "{error:?}"
    );
    server.close();

    for (line, status) in [
        ("403 Forbidden", 403),
        ("429 Too Many Requests", 429),
        ("503 Service Unavailable", 503),
    ] {
        let error = Client::builder(&http_refuser(line))
            .reconnect(false)
            .connect()
            .unwrap_err();
        assert_eq!(error.http_status(), Some(status), "{error:?}");
    }
    // Other failures have none.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let error = Client::connect(&format!("ws://{closed}/")).unwrap_err();
    assert_eq!(error.http_status(), None);
}

#[test]
fn codec_errors_keep_their_source() {
    let server = common::start();
    let client = Client::connect(&url(&server, "/")).unwrap();
    let error = client.call_as::<String>("sum", [1, 2]).unwrap_err();
    assert!(matches!(error, Error::Codec(_)), "{error:?}");
    let source = error.source().expect("the decoding error is kept");
    assert!(
        source.downcast_ref::<serde_json::Error>().is_some(),
        "{source:?}"
    );
    client.close();
    server.close();
}

#[test]
fn a_std_error_from_a_handler_reaches_the_client_without_a_type_name() {
    let server = common::start();
    server.register("parse", |(text,): (String,), _| -> Result<i64, RpcError> {
        Ok(text.parse::<i64>()?)
    });
    let client = Client::connect(&url(&server, "/")).unwrap();
    match client.call("parse", ["x"]) {
        Err(Error::Rpc(e)) => {
            assert_eq!(e, RpcError::server("invalid digit found in string"));
        }
        other => panic!("expected an RPC error, got {other:?}"),
    }
    client.close();
    server.close();
}

#[test]
fn a_host_name_is_looked_up_and_connected_to() {
    let server = common::start();
    let port = server.local_addr().port();
    // Looked up on a thread of its own (a lookup cannot be interrupted).
    let client = Client::builder(&format!("ws://localhost:{port}/"))
        .timeout(Duration::MAX)
        .connect()
        .unwrap();
    assert_eq!(client.call("sum", [1, 1]).unwrap(), json!(2));
    client.close();
    server.close();
}
