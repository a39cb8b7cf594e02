//! The server API over real loopback sockets: binding, namespaces, clients, closing,
//! lifecycle callbacks, and staying up and responsive under slow handlers, slow
//! clients, panics and hostile input.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{DEADLINE, Raw, wait_until};
use serde_json::{Value, json};
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use wsrpc::{ConnectionInfo, DisconnectInfo, Server, ServerConfig};

fn quick() -> ServerConfig {
    common::quick_close(200)
}

fn server() -> Server {
    common::start_with(Server::builder().config(quick()))
}

fn connect(server: &Server, path: &str) -> Raw {
    Raw::connect(&common::url(server, path))
}

/// Drop the clients (so nobody holds the close handshake up), then close the server.
fn finish(server: Server, clients: Vec<Raw>) {
    drop(clients);
    server.close();
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

// ---------------------------------------------------------------- binding

#[test]
fn binds_port_zero_and_reports_the_real_address() {
    let (tx, rx) = mpsc::channel::<SocketAddr>();
    let server = common::start_with(
        Server::builder()
            .config(quick())
            .on_listening(move |addr| tx.send(*addr).unwrap()),
    );
    let addr = server.local_addr();
    assert_ne!(addr.port(), 0);
    assert!(addr.ip().is_loopback());
    assert_eq!(rx.recv_timeout(DEADLINE).unwrap(), addr);
    let mut raw = Raw::connect(&format!("ws://{addr}"));
    assert_eq!(raw.call("sum", json!([5, 3]))["result"], 8);
    finish(server, vec![raw]);
}

// ---------------------------------------------------------------- namespaces

#[test]
fn namespaces_are_chosen_by_url_path() {
    let server = server();
    let mut chat = connect(&server, "/chat");
    assert_eq!(
        chat.call("sum", json!([2, 3])),
        json!({"jsonrpc": "2.0", "result": 5, "id": 1})
    );
    assert_eq!(
        chat.call("greet", json!({"name": "x"}))["error"]["code"],
        -32601
    );
    let mut root = connect(&server, "");
    assert_eq!(
        root.call("greet", json!({"name": "x"}))["result"],
        "Hello, x!"
    );
    let mut slash = connect(&server, "/?a=b");
    assert_eq!(
        slash.call("whoami", json!([]))["result"]
            .as_str()
            .map(str::len),
        Some(36)
    );
    finish(server, vec![chat, root, slash]);
}

#[test]
fn unknown_path_gets_an_empty_namespace() {
    let server = server();
    let mut raw = connect(&server, "/nowhere");
    assert_eq!(
        raw.call("__listMethods", json!([])),
        json!({"jsonrpc": "2.0", "result": ["__listMethods"], "id": 1})
    );
    assert_eq!(raw.call("sum", json!([1]))["error"]["code"], -32601);
    assert_eq!(
        raw.call("rpc.on", json!(["newsUpdate"]))["result"],
        json!({"newsUpdate": "provided event invalid"})
    );
    assert_eq!(
        raw.call("rpc.login", json!({"username": "foo"}))["error"]["code"],
        -32601
    );
    finish(server, vec![raw]);
}

#[test]
fn refused_unknown_namespace_fails_the_handshake_with_404() {
    let mut config = quick();
    config.refuse_unknown_namespaces = true;
    let (err_tx, err_rx) = mpsc::channel::<String>();
    let server = common::start_with(
        Server::builder()
            .config(config)
            .on_error(move |e| drop(err_tx.send(e.to_string()))),
    );
    match tungstenite::connect(common::url(&server, "/nowhere")) {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 404),
        Err(e) => panic!("expected HTTP 404, got {e}"),
        Ok(_) => panic!("a connection to an unknown namespace was accepted"),
    }
    // The refusal is reported as a failed handshake.
    assert!(err_rx.recv_timeout(DEADLINE).is_ok());
    // Known namespaces are still served.
    let mut root = connect(&server, "/");
    let mut chat = connect(&server, "/chat");
    assert_eq!(root.call("sum", json!([1, 2]))["result"], 3);
    assert_eq!(chat.call("sum", json!([1, 2]))["result"], 3);
    finish(server, vec![root, chat]);
}

#[test]
fn clients_lists_socket_ids_per_namespace() {
    let server = server();
    let alice = connect(&server, "/?socket_id=alice");
    let mut carol = connect(&server, "/?socket_id=carol&x=1");
    let bob = connect(&server, "/chat?socket_id=bob");
    let spaced = connect(&server, "/spaced?socket_id=a%20b+c");
    assert!(wait_until(
        || server.namespace("/spaced").clients() == ["a b c"]
    ));
    let anon = connect(&server, "/chat");
    assert!(wait_until(|| server.namespace("/chat").clients().len() == 2));
    let chat = sorted(server.namespace("/chat").clients());
    let generated = chat
        .iter()
        .find(|id| *id != "bob")
        .expect("bob and another");
    assert_eq!(
        generated.len(),
        36,
        "a generated id looks like a UUID: {generated}"
    );
    assert!(chat.contains(&"bob".to_owned()), "{chat:?}");
    assert!(wait_until(|| sorted(server.clients()) == ["alice", "carol"]));
    assert_eq!(carol.call("whoami", json!([]))["result"], "carol");
    assert!(server.namespace("/nowhere").clients().is_empty());
    // A client that leaves is no longer listed.
    drop(alice);
    assert!(wait_until(|| server.clients() == ["carol"]));
    finish(server, vec![carol, bob, anon, spaced]);
}

#[test]
fn generated_socket_ids_differ() {
    let server = server();
    let mut a = connect(&server, "/");
    let mut b = connect(&server, "/");
    let id_a = a.call("whoami", json!([]))["result"].clone();
    let id_b = b.call("whoami", json!([]))["result"].clone();
    assert!(id_a.is_string() && id_b.is_string());
    assert_ne!(id_a, id_b);
    finish(server, vec![a, b]);
}

#[test]
fn namespace_close_sends_1001_and_leaves_other_namespaces_working() {
    let (tx, rx) = mpsc::channel::<DisconnectInfo>();
    let server = common::start_with(
        Server::builder()
            .config(quick())
            .on_disconnection(move |d| drop(tx.send(d.clone()))),
    );
    let mut chat1 = connect(&server, "/chat?socket_id=c1");
    let mut chat2 = connect(&server, "/chat?socket_id=c2");
    let mut root = connect(&server, "/?socket_id=r");
    assert_eq!(
        root.call("rpc.on", json!(["newMessage"]))["result"],
        json!({"newMessage": "ok"})
    );
    assert!(wait_until(|| server.namespace("/chat").clients().len() == 2));
    server.namespace("/chat").close();
    assert_eq!(chat1.recv_close(), (1001, "namespace closed".to_owned()));
    assert_eq!(chat2.recv_close(), (1001, "namespace closed".to_owned()));
    for _ in 0..2 {
        let gone = rx.recv_timeout(DEADLINE).expect("chat clients disconnect");
        assert_eq!((gone.namespace.as_str(), gone.code), ("/chat", 1001));
    }
    // The root namespace is untouched: calls and events still work.
    assert_eq!(root.call("sum", json!([1, 2]))["result"], 3);
    server.emit("newMessage", json!(["still here"])).unwrap();
    assert_eq!(
        root.recv_text(),
        r#"{"notification":"newMessage","params":["still here"]}"#
    );
    assert_eq!(server.clients(), ["r"]);
    // The closed namespace's methods and events are gone: a new client of the path
    // finds an empty namespace.
    let mut again = connect(&server, "/chat");
    assert_eq!(again.call("sum", json!([1]))["error"]["code"], -32601);
    assert_eq!(
        again.call("__listMethods", json!([]))["result"],
        json!(["__listMethods"])
    );
    assert!(server.namespace("/chat").event_list().is_empty());
    assert!(
        rx.try_recv().is_err(),
        "only the chat clients were disconnected"
    );
    finish(server, vec![chat1, chat2, root, again]);
}

#[test]
fn event_list_names_events_in_declaration_order() {
    let server = server();
    assert_eq!(
        server.event_list(),
        ["newsUpdate", "newMessage", "secretFeed"]
    );
    assert_eq!(
        server.namespace("/chat").event_list(),
        ["newMessage", "chatMessage"]
    );
    assert!(server.namespace("/nowhere").event_list().is_empty());
    server.event("late");
    server.event("newsUpdate");
    assert_eq!(
        server.event_list(),
        ["newsUpdate", "newMessage", "secretFeed", "late"]
    );
    server.close();
}

// ---------------------------------------------------------------- lifecycle callbacks

#[test]
fn on_connection_gets_namespace_query_and_headers() {
    let (tx, rx) = mpsc::channel::<ConnectionInfo>();
    let server = common::start_with(
        Server::builder()
            .config(quick())
            .on_connection(move |c| drop(tx.send(c.clone()))),
    );
    let mut request = common::url(&server, "/chat?socket_id=cb&x=a%20b")
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("x-wsrpc-test", "hello".parse().unwrap());
    let raw = Raw::connect_request(request);
    let info = rx.recv_timeout(DEADLINE).expect("on_connection is called");
    assert_eq!(info.socket_id, "cb");
    assert_eq!(info.namespace, "/chat");
    assert_eq!(info.query, "socket_id=cb&x=a%20b");
    assert_eq!(info.query_param("x").as_deref(), Some("a b"));
    assert_eq!(info.header("X-Wsrpc-Test"), Some("hello"));
    assert!(
        info.headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("x-wsrpc-test") && v == "hello")
    );
    assert_eq!(
        info.peer_addr.map(|a| a.port()),
        Some(raw.tcp().local_addr().unwrap().port())
    );
    let plain = connect(&server, "");
    let info = rx.recv_timeout(DEADLINE).expect("on_connection is called");
    assert_eq!((info.namespace.as_str(), info.query.as_str()), ("/", ""));
    finish(server, vec![raw, plain]);
}

fn disconnections() -> (Server, mpsc::Receiver<DisconnectInfo>) {
    let (tx, rx) = mpsc::channel::<DisconnectInfo>();
    let server = common::start_with(
        Server::builder()
            .config(quick())
            .on_disconnection(move |d| drop(tx.send(d.clone()))),
    );
    (server, rx)
}

#[test]
fn on_disconnection_gets_the_clients_close_code() {
    let (server, rx) = disconnections();
    let mut raw = connect(&server, "/chat?socket_id=leaver");
    assert_eq!(raw.call("sum", json!([1]))["result"], 1);
    raw.ws
        .close(Some(CloseFrame {
            code: CloseCode::from(4000),
            reason: "bye".into(),
        }))
        .unwrap();
    // The server answers the close frame, then ends the connection.
    loop {
        match raw.ws.read() {
            Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("the close handshake did not complete: {e}"),
        }
    }
    let info = rx
        .recv_timeout(DEADLINE)
        .expect("on_disconnection is called");
    assert_eq!(info.socket_id, "leaver");
    assert_eq!(info.namespace, "/chat");
    assert_eq!((info.code, info.reason.as_str()), (4000, "bye"));
    finish(server, vec![]);
}

#[test]
fn on_disconnection_gets_1006_when_the_tcp_connection_drops() {
    let (server, rx) = disconnections();
    let mut raw = connect(&server, "/?socket_id=dropper");
    assert_eq!(raw.call("sum", json!([1]))["result"], 1);
    raw.tcp().shutdown(Shutdown::Both).unwrap();
    drop(raw);
    let info = rx
        .recv_timeout(DEADLINE)
        .expect("on_disconnection is called");
    assert_eq!((info.socket_id.as_str(), info.code), ("dropper", 1006));
    assert!(wait_until(|| server.clients().is_empty()));
    finish(server, vec![]);
}

#[test]
fn on_error_reports_a_failed_handshake() {
    let (tx, rx) = mpsc::channel::<String>();
    let server = common::start_with(
        Server::builder()
            .config(quick())
            .on_error(move |e| drop(tx.send(e.to_string()))),
    );
    let mut tcp = TcpStream::connect(server.local_addr()).unwrap();
    tcp.set_read_timeout(Some(DEADLINE)).unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let error = rx.recv_timeout(DEADLINE).expect("on_error is called");
    assert!(!error.is_empty());
    // The server is fine: a real client is served.
    let mut raw = connect(&server, "/");
    assert_eq!(raw.call("sum", json!([1]))["result"], 1);
    let mut rest = Vec::new();
    let _ = tcp.read_to_end(&mut rest);
    finish(server, vec![raw]);
}

// ---------------------------------------------------------------- closing

#[test]
fn close_sends_every_client_1001_then_refuses_connections() {
    let mut config = quick();
    // Clients that answer the close frame must not make close() wait this long.
    config.close_timeout = Duration::from_secs(5);
    let (tx, rx) = mpsc::channel::<DisconnectInfo>();
    let server = common::start_with(
        Server::builder()
            .config(config)
            .on_disconnection(move |d| drop(tx.send(d.clone()))),
    );
    let mut readers = Vec::new();
    for path in ["/", "/chat", "/nowhere"] {
        let mut raw = connect(&server, path);
        assert!(raw.call("__listMethods", json!([]))["result"].is_array());
        readers.push(thread::spawn(move || {
            let close = raw.recv_close();
            // Read on until the server ends the connection.
            while raw.ws.read().is_ok() {}
            close
        }));
    }
    let started = Instant::now();
    server.close();
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "close() waited {took:?} although every client answered"
    );
    for reader in readers {
        let (code, _reason) = reader.join().unwrap();
        assert_eq!(code, 1001);
    }
    let codes: Vec<u16> = rx.try_iter().map(|d| d.code).collect();
    assert_eq!(
        codes,
        [1001, 1001, 1001],
        "every client disconnected before close returned"
    );
    assert!(
        tungstenite::connect(common::url(&server, "/")).is_err(),
        "a connection was accepted after close()"
    );
    assert!(server.emit("newsUpdate", 1).is_err());
    assert!(server.clients().is_empty());
    // Closing again does nothing.
    server.close();
}

#[test]
fn close_does_not_wait_past_close_timeout_for_a_silent_client() {
    let server = common::start_with(Server::builder().config(common::quick_close(300)));
    let mut silent = connect(&server, "/");
    assert_eq!(silent.call("sum", json!([1]))["result"], 1);
    let started = Instant::now();
    server.close();
    assert!(started.elapsed() < Duration::from_secs(3));
    // The silent client finds its connection ended (after the close frame).
    assert_eq!(silent.recv_close().0, 1001);
}

// ---------------------------------------------------------------- robustness

#[test]
fn panicking_handler_gets_internal_error_and_connection_keeps_working() {
    let server = server();
    let mut raw = connect(&server, "/");
    let reply = raw.call("panic", json!([]));
    assert_eq!(reply["error"]["code"], -32603, "{reply}");
    assert_eq!(reply["error"]["message"], "Internal error");
    assert_eq!(reply["id"], 1);
    // As a notification: nothing is sent.
    raw.send_text(r#"{"jsonrpc":"2.0","method":"panic"}"#);
    assert_eq!(
        raw.call("sum", json!([5, 3])),
        json!({"jsonrpc": "2.0", "result": 8, "id": 1})
    );
    let mut other = connect(&server, "/");
    assert_eq!(other.call("sum", json!([1]))["result"], 1);
    finish(server, vec![raw, other]);
}

#[test]
fn slow_call_delays_neither_later_calls_on_its_connection_nor_other_connections() {
    let server = server();
    let mut raw = connect(&server, "/");
    let mut other = connect(&server, "/");
    let started = Instant::now();
    raw.send_text(r#"{"jsonrpc":"2.0","method":"sleep","params":[2000],"id":1}"#);
    raw.send_text(r#"{"jsonrpc":"2.0","method":"sum","params":[5,3],"id":2}"#);
    // The later sum is answered first, long before the sleep ends.
    assert_eq!(raw.recv(), json!({"jsonrpc": "2.0", "result": 8, "id": 2}));
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_millis(1500),
        "the sum waited {waited:?}"
    );
    // Meanwhile another connection is served at once.
    for n in 0..5 {
        assert_eq!(other.call("sum", json!([n, 1]))["result"], n + 1);
    }
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_millis(1500),
        "calls on another connection waited {waited:?}"
    );
    // And the slow call still gets its own reply.
    assert_eq!(
        raw.recv(),
        json!({"jsonrpc": "2.0", "result": 2000, "id": 1})
    );
    assert!(started.elapsed() >= Duration::from_millis(2000));
    finish(server, vec![raw, other]);
}

/// A masked text frame of a JSON-RPC call, as a client sends it.
fn call_frame(method: &str, params: Value, id: u64) -> Vec<u8> {
    let call = json!({"jsonrpc": "2.0", "method": method, "params": params, "id": id});
    common::ws_frame(common::OP_TEXT, true, call.to_string().as_bytes())
}

/// The next frame from the server, as JSON.
fn read_json(wire: &mut common::Wire) -> Value {
    let frame = wire.read_frame().expect("a frame before the deadline");
    serde_json::from_slice(&frame.payload).expect("a JSON frame")
}

#[test]
fn pipelined_calls_are_answered_in_order_while_the_next_frame_is_still_arriving() {
    // Replies to requests read together are written together, once the reader runs
    // out of whole frames: here it then waits for the rest of a frame, and the 50
    // replies must not wait with it.
    let server = server();
    let mut wire = common::Wire::connect(&server, "/");
    let frame = |id: u64| call_frame("sum", json!([id, 1]), id);
    let mut burst: Vec<u8> = (1..=50).flat_map(frame).collect();
    let last = frame(51);
    let (head, tail) = last.split_at(last.len() / 2);
    burst.extend_from_slice(head);
    wire.send(&burst).unwrap();
    for id in 1..=50u64 {
        let reply = read_json(&mut wire);
        assert_eq!(reply, json!({"jsonrpc": "2.0", "result": id + 1, "id": id}));
    }
    wire.send(tail).unwrap();
    assert_eq!(read_json(&mut wire)["id"], 51);
    server.close();
}

#[test]
fn a_reply_held_for_batching_does_not_wait_for_a_slow_call_read_with_it() {
    // sum and sleep arrive in one write: sum's reply is held while sleep runs, but
    // goes out long before sleep ends, even with no second reader thread to send it
    // (one call in flight per connection).
    let mut config = quick();
    config.max_calls_in_flight = 1;
    let server = common::start_with(Server::builder().config(config));
    let mut wire = common::Wire::connect(&server, "/");
    let started = Instant::now();
    let mut both = call_frame("sum", json!([2, 3]), 1);
    both.extend(call_frame("sleep", json!([3000]), 2));
    wire.send(&both).unwrap();
    let reply = read_json(&mut wire);
    assert_eq!(reply, json!({"jsonrpc": "2.0", "result": 5, "id": 1}));
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_millis(1500),
        "the sum's reply waited {waited:?}"
    );
    assert_eq!(read_json(&mut wire)["id"], 2);
    server.close();
}

#[test]
fn a_burst_of_events_arrives_whole_and_in_order_before_the_close() {
    // Queued events are written several at a time; the close queued behind them
    // still comes last.
    let server = server();
    let mut raw = connect(&server, "/");
    assert_eq!(
        raw.call("rpc.on", json!(["newsUpdate"]))["result"]["newsUpdate"],
        "ok"
    );
    for n in 0..300 {
        server.emit("newsUpdate", json!({"n": n})).unwrap();
    }
    let closing = thread::spawn(move || server.close());
    for n in 0..300 {
        assert_eq!(
            raw.recv(),
            json!({"notification": "newsUpdate", "params": {"n": n}})
        );
    }
    assert_eq!(raw.recv_close().0, 1001);
    closing.join().unwrap();
}

// A client that never reads while events pile up: tests/hostile.rs,
// client_that_never_reads_large_events_is_dropped_with_1008.

/// A JSON array nested `depth` levels deep: `[[[...]]]`.
fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

#[test]
fn json_nested_127_levels_is_answered() {
    let server = server();
    let mut raw = connect(&server, "/");
    let deep = nested(127);
    let reply = {
        raw.send_text(&format!(
            r#"{{"jsonrpc":"2.0","method":"echo","params":{deep},"id":1}}"#
        ));
        raw.recv_text()
    };
    assert_eq!(
        reply,
        format!(r#"{{"jsonrpc":"2.0","result":{deep},"id":1}}"#)
    );
    finish(server, vec![raw]);
}

#[test]
fn json_nested_10000_levels_gets_an_error_reply() {
    let server = server();
    let mut raw = connect(&server, "/");
    let deep = nested(10_000);
    let deep_object = format!("{}1{}", r#"{"a":"#.repeat(10_000), "}".repeat(10_000));
    let frames = [
        format!(r#"{{"jsonrpc":"2.0","method":"echo","params":{deep},"id":1}}"#),
        format!(r#"{{"jsonrpc":"2.0","method":"echo","params":[{deep_object}],"id":1}}"#),
        format!(r#"{{"jsonrpc":"2.0","method":"echo","params":[1],"id":{deep}}}"#),
        format!(r#"{{"jsonrpc":"2.0","method":{deep},"id":1}}"#),
        deep.clone(),
        deep_object.clone(),
    ];
    for frame in &frames {
        raw.send_text(frame);
        let reply: Value = serde_json::from_str(&raw.recv_text()).expect("a JSON reply");
        let reply = match reply {
            Value::Array(mut items) if items.len() == 1 => items.remove(0),
            other => other,
        };
        assert!(
            reply["error"]["code"].is_i64(),
            "expected an error reply for {:.60}…, got {reply}",
            frame
        );
    }
    // The server and the connection are still there.
    assert_eq!(raw.call("sum", json!([1, 2]))["result"], 3);
    let mut other = connect(&server, "/");
    assert_eq!(other.call("sum", json!([1, 2]))["result"], 3);
    finish(server, vec![raw, other]);
}

#[test]
fn oversized_message_is_refused_with_1009() {
    let mut config = quick();
    config.max_message_size = 1024;
    let (tx, rx) = mpsc::channel::<DisconnectInfo>();
    let server = common::start_with(
        Server::builder()
            .config(config)
            .on_disconnection(move |d| drop(tx.send(d.clone()))),
    );
    let mut raw = connect(&server, "/");
    let big = format!(
        r#"{{"jsonrpc":"2.0","method":"echo","params":["{}"],"id":1}}"#,
        "x".repeat(2048)
    );
    raw.send_text(&big);
    assert_eq!(raw.recv_close().0, 1009);
    assert_eq!(rx.recv_timeout(DEADLINE).expect("disconnected").code, 1009);
    let mut other = connect(&server, "/");
    assert_eq!(
        other.call("echo", json!(["small"]))["result"],
        json!(["small"])
    );
    finish(server, vec![raw, other]);
}

#[test]
fn overlapping_slow_calls_do_not_delay_a_later_call() {
    let server = server();
    let mut raw = connect(&server, "/");
    let started = Instant::now();
    raw.send_text(r#"{"jsonrpc":"2.0","method":"sleep","params":[1200],"id":1}"#);
    raw.send_text(r#"{"jsonrpc":"2.0","method":"sleep","params":[1200],"id":2}"#);
    raw.send_text(r#"{"jsonrpc":"2.0","method":"sum","params":[5,3],"id":3}"#);
    assert_eq!(raw.recv(), json!({"jsonrpc": "2.0", "result": 8, "id": 3}));
    let waited = started.elapsed();
    let mut rest = vec![raw.recv()["id"].clone(), raw.recv()["id"].clone()];
    rest.sort_by_key(|id| id.as_i64());
    assert_eq!(rest, [1, 2]);
    assert!(
        waited < Duration::from_millis(900),
        "the sum waited {waited:?} for the second sleep"
    );
    finish(server, vec![raw]);
}

#[test]
fn close_does_not_wait_for_a_connection_still_in_its_handshake() {
    let server = server();
    let mut raw = connect(&server, "/");
    assert_eq!(raw.call("sum", json!([1]))["result"], 1);
    // A TCP connection that never sends its upgrade request.
    let half_open = TcpStream::connect(server.local_addr()).unwrap();
    // A connection made after it is served, so the acceptor has taken it in.
    let mut later = connect(&server, "/");
    assert_eq!(later.call("sum", json!([2]))["result"], 2);
    drop((raw, later));
    let started = Instant::now();
    server.close();
    let took = started.elapsed();
    drop(half_open);
    assert!(
        took < Duration::from_secs(3),
        "close() took {took:?}: it waited for the handshake timeout"
    );
}

#[test]
fn refused_namespace_stays_unknown_after_being_queried() {
    let mut config = quick();
    config.refuse_unknown_namespaces = true;
    let server = common::start_with(Server::builder().config(config));
    // Looking at a namespace registers nothing in it.
    assert!(server.namespace("/ghost").clients().is_empty());
    assert!(server.namespace("/ghost").event_list().is_empty());
    match tungstenite::connect(common::url(&server, "/ghost")) {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 404),
        Err(e) => panic!("expected HTTP 404, got {e}"),
        Ok(_) => panic!("a connection to a namespace with nothing registered was accepted"),
    }
    server.close();
}

#[test]
fn namespace_close_drops_a_client_that_ignores_the_close_frame() {
    let (tx, rx) = mpsc::channel::<DisconnectInfo>();
    let server = common::start_with(
        Server::builder()
            .config(common::quick_close(100))
            .on_disconnection(move |d| drop(tx.send(d.clone()))),
    );
    // This client never reads, so it never answers the close frame.
    let silent = connect(&server, "/chat?socket_id=silent");
    assert!(wait_until(|| server.namespace("/chat").clients().len() == 1));
    server.namespace("/chat").close();
    let gone = rx
        .recv_timeout(DEADLINE)
        .expect("the silent client is dropped after close_timeout");
    assert_eq!((gone.socket_id.as_str(), gone.code), ("silent", 1001));
    drop(silent);
    server.close();
}

#[test]
fn calls_in_flight_per_connection_are_capped() {
    let mut config = quick();
    config.max_calls_in_flight = 2;
    let server = common::start_with(Server::builder().config(config));
    let mut raw = connect(&server, "/");
    for id in 1..=3 {
        raw.send_text(&format!(
            r#"{{"jsonrpc":"2.0","method":"sleep","params":[300],"id":{id}}}"#
        ));
    }
    raw.send_text(r#"{"jsonrpc":"2.0","method":"sum","params":[1,2],"id":"sum"}"#);
    // Two sleeps run at once; the third holds the reader, so the sum must wait for a
    // sleep to finish. Without the cap the sum would be answered first.
    let first = raw.recv();
    assert_eq!(first["id"], 1, "first reply: {first}");
    let mut ids = vec![first["id"].clone()];
    for _ in 0..4 - 1 {
        ids.push(raw.recv()["id"].clone());
    }
    assert!(
        ids.contains(&json!("sum")),
        "every call is answered: {ids:?}"
    );
    finish(server, vec![raw]);
}

#[test]
fn handshake_timeout_is_a_deadline_not_a_per_read_timeout() {
    let mut config = quick();
    config.handshake_timeout = Duration::from_millis(300);
    let server = common::start_with(Server::builder().config(config));
    let mut tcp = TcpStream::connect(server.local_addr()).unwrap();
    tcp.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let start = Instant::now();
    // A valid start, then a header value that never ends, a byte every 50 ms: every
    // single read is well inside the timeout.
    let request = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ";
    let mut dropped = false;
    for byte in request.iter().chain(std::iter::repeat(&b'a')) {
        if start.elapsed() > DEADLINE {
            break;
        }
        if tcp.write_all(&[*byte]).is_err() {
            dropped = true;
            break;
        }
        match tcp.read(&mut [0u8; 64]) {
            Ok(0) => {
                dropped = true;
                break;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => {
                dropped = true;
                break;
            }
        }
    }
    assert!(dropped, "the dribbling handshake was never cut off");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "cut off only after {:?}",
        start.elapsed()
    );
    server.close();
}

#[test]
fn a_panicking_connection_hook_does_not_break_the_connection() {
    let (tx, rx) = mpsc::channel::<DisconnectInfo>();
    let server = common::start_with(
        Server::builder()
            .config(quick())
            .on_connection(|_| panic!("hook panics"))
            .on_disconnection(move |d| drop(tx.send(d.clone()))),
    );
    let mut raw = connect(&server, "/?socket_id=h");
    assert_eq!(raw.call("sum", json!([2, 3]))["result"], 5);
    drop(raw);
    let gone = rx
        .recv_timeout(DEADLINE)
        .expect("the disconnection is reported");
    assert_eq!(gone.socket_id, "h");
    server.close();
}

// ---------------------------------------------------------------- params

#[test]
fn a_method_without_params_answers_empty_array_object_null_and_absent_params() {
    let server = server();
    server.register("balance", |_: (), _| Ok::<_, wsrpc::RpcError>(42));
    server.register("page", |p: Option<(u32, u32)>, _| {
        Ok::<_, wsrpc::RpcError>(p.map_or(0, |(a, b)| a * b))
    });
    let mut raw = connect(&server, "/");
    // What JavaScript callers send: `client.call("balance", [])`, `{}`, null, nothing.
    for params in [
        r#","params":[]"#,
        r#","params":{}"#,
        r#","params":null"#,
        "",
    ] {
        let frame = format!(r#"{{"jsonrpc":"2.0","method":"balance"{params},"id":1}}"#);
        assert_eq!(raw.request(&frame)["result"], json!(42), "{frame}");
        let frame = format!(r#"{{"jsonrpc":"2.0","method":"page"{params},"id":2}}"#);
        assert_eq!(raw.request(&frame)["result"], json!(0), "{frame}");
    }
    assert_eq!(raw.call("page", json!([3, 4]))["result"], json!(12));
    // Arguments where none are taken are still refused.
    assert_eq!(
        raw.call("balance", json!([1]))["error"]["code"],
        json!(-32602)
    );
    finish(server, vec![raw]);
}
