//! The MessagePack dialect of PROTOCOL.md over real loopback sockets: exact frames from
//! a raw WebSocket client (replies, errors, notifications, batches, values JSON cannot
//! carry, malformed frames), how a connection's codec is chosen (query, subprotocol,
//! first frame), JSON and MessagePack subscribers side by side, and the Rust `Client`
//! speaking MessagePack through every API path.

mod common;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use common::{DEADLINE, Raw};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Value, json};
use tungstenite::Message;
use tungstenite::client::IntoClientRequest;
use tungstenite::http::header::SEC_WEBSOCKET_PROTOCOL;
use wsrpc::{Client, Error, RpcError, Server};

// The frames captured in PROTOCOL.md, "MessagePack dialect".
/// `{"method":"sum","params":[5,3],"id":1}`
const CONTRACT_REQUEST: &str = "83a66d6574686f64a373756da6706172616d73920503a2696401";
/// `{"result":8,"id":1}`
const CONTRACT_REPLY: &str = "82a6726573756c7408a2696401";
/// `{"notification":"feed","params":{"a":1}}`
const CONTRACT_EVENT: &str = "82ac6e6f74696669636174696f6ea466656564a6706172616d7381a16101";

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// The fixture server plus the event `feed` of the captured frames; `close()` waits
/// briefly for clients that do not answer.
fn server() -> Server {
    let server = common::start_with(Server::builder().config(common::quick_close(200)));
    server.event("feed");
    server
}

fn connect(server: &Server, path: &str) -> Raw {
    Raw::connect(&common::url(server, path))
}

/// Drop the clients (so nobody holds the close handshake up), then close the server.
fn finish(server: Server, clients: Vec<Raw>) {
    drop(clients);
    server.close();
}

/// A MessagePack fixstr.
fn fixstr(out: &mut Vec<u8>, s: &str) {
    assert!(s.len() < 32);
    out.push(0xa0 | s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

/// `{"method": method, "params": <params, as given>, "id": id}` as MessagePack, for
/// params no JSON value can express.
fn request_with_params(method: &str, params: &[u8], id: u8) -> Vec<u8> {
    assert!(id < 0x80);
    let mut out = vec![0x83];
    fixstr(&mut out, "method");
    fixstr(&mut out, method);
    fixstr(&mut out, "params");
    out.extend_from_slice(params);
    fixstr(&mut out, "id");
    out.push(id);
    out
}

/// Assert that the next frame is the binary reply to a fresh MessagePack `sum` call:
/// nothing was sent in between, and the connection still works.
fn next_frame_is_reply_to_a_msgpack_call(raw: &mut Raw) {
    raw.send_msgpack(&json!({"method": "sum", "params": [20, 22], "id": "probe"}));
    assert_eq!(raw.recv_msgpack(), json!({"result": 42, "id": "probe"}));
}

/// Subscribe with a MessagePack `rpc.on` and check the binary reply.
fn subscribe_msgpack(raw: &mut Raw, event: &str) {
    let reply = raw.request_msgpack(&json!({"method": "rpc.on", "params": [event], "id": 1}));
    assert_eq!(reply, json!({"result": {event: "ok"}, "id": 1}));
}

/// Subscribe with a JSON `rpc.on` in a text frame and check the text reply.
fn subscribe_json(raw: &mut Raw, event: &str) {
    let reply = raw.call("rpc.on", json!([event]));
    assert_eq!(
        reply,
        json!({"jsonrpc": "2.0", "result": {event: "ok"}, "id": 1})
    );
}

/// The next frame, which must be a text frame holding JSON.
fn recv_json_text(raw: &mut Raw) -> Value {
    match raw.recv_message() {
        Message::Text(text) => serde_json::from_str(&text).expect("a JSON text frame"),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

/// A handshake request for `path` offering the subprotocols `offer`.
fn offering(server: &Server, path: &str, offer: &str) -> tungstenite::handshake::client::Request {
    let mut request = common::url(server, path).into_client_request().unwrap();
    request
        .headers_mut()
        .insert(SEC_WEBSOCKET_PROTOCOL, offer.parse().unwrap());
    request
}

/// Connect with `request`; also returns the handshake response's subprotocol header.
fn connect_seeing_subprotocol(
    request: tungstenite::handshake::client::Request,
) -> (Raw, Option<String>) {
    let (ws, response) = tungstenite::connect(request).expect("websocket handshake");
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(DEADLINE)).unwrap();
    }
    let protocol = response
        .headers()
        .get(SEC_WEBSOCKET_PROTOCOL)
        .map(|v| v.to_str().unwrap().to_owned());
    (Raw { ws }, protocol)
}

/// Run `test` on a raw client connected at `path` to a fresh `server()`, then `finish`.
fn with_raw(path: &str, test: impl FnOnce(&Server, &mut Raw)) {
    let server = server();
    let mut raw = connect(&server, path);
    test(&server, &mut raw);
    finish(server, vec![raw]);
}

/// The error reply `{"error": {"code": code, "message": message}, "id": id}`.
fn error_reply(code: i64, message: &str, id: Value) -> Value {
    json!({"error": {"code": code, "message": message}, "id": id})
}

/// The error reply `{"error": {"code": code, "message": message, "data": data}, "id": id}`.
fn error_reply_with_data(code: i64, message: &str, data: &str, id: Value) -> Value {
    json!({"error": {"code": code, "message": message, "data": data}, "id": id})
}

/// The error reply `-32600 Invalid Request` with `data`.
fn invalid(data: &str, id: Value) -> Value {
    error_reply_with_data(-32600, "Invalid Request", data, id)
}

/// Assert that `reply` is an error reply with `code`.
#[track_caller]
fn assert_error_code(reply: &Value, code: i64) {
    assert_eq!(reply["error"]["code"], code, "{reply}");
}

/// Send `request_with_params(method, params, id)` and read the MessagePack reply.
fn request_raw_params(raw: &mut Raw, method: &str, params: &[u8], id: u8) -> Value {
    raw.send_binary(&request_with_params(method, params, id));
    raw.recv_msgpack()
}

/// Assert that a MessagePack `echo` of `params` with id 1 comes back unchanged.
#[track_caller]
fn assert_echoed(raw: &mut Raw, params: &Value) {
    assert_eq!(
        raw.request_msgpack(&json!({"method": "echo", "params": params, "id": 1})),
        json!({"result": params, "id": 1})
    );
}

/// Assert that the next frame is the text frame `expected`, to the letter.
#[track_caller]
fn assert_next_text(raw: &mut Raw, expected: &str) {
    assert_eq!(raw.recv_message(), Message::Text(expected.into()));
}

/// The codec of a request, or of the events a connection gets.
#[derive(Clone, Copy)]
enum Codec {
    Json,
    Msgpack,
}

/// Subscribe to `feed` with an `rpc.on` in `codec`, checking the reply.
fn subscribe_feed(raw: &mut Raw, codec: Codec) {
    match codec {
        Codec::Json => subscribe_json(raw, "feed"),
        Codec::Msgpack => subscribe_msgpack(raw, "feed"),
    }
}

/// Emit `feed` with the params of the captured event.
fn emit_feed(server: &Server) {
    server.emit("feed", json!({"a": 1})).unwrap();
}

/// Assert that the next frame is the captured `feed` event in `codec`: exactly the
/// captured MessagePack frame, or its JSON text frame.
#[track_caller]
fn assert_next_feed_event(raw: &mut Raw, codec: Codec) {
    match codec {
        Codec::Msgpack => assert_eq!(raw.recv_binary(), hex(CONTRACT_EVENT)),
        Codec::Json => assert_next_text(raw, r#"{"notification":"feed","params":{"a":1}}"#),
    }
}

/// Subscribe to `feed` with a request in `asked_in`, emit it, and check that the event
/// arrives in `arrives_in`.
#[track_caller]
fn feed_event_arrives_in(server: &Server, raw: &mut Raw, asked_in: Codec, arrives_in: Codec) {
    subscribe_feed(raw, asked_in);
    emit_feed(server);
    assert_next_feed_event(raw, arrives_in);
}

/// Connect to `/` offering the subprotocols `offer` and check that the handshake
/// echoes `echoed`; then a `feed` subscription asked in `asked_in` must get its event in
/// `arrives_in`.
fn subprotocol_selects_events(offer: &str, echoed: &str, asked_in: Codec, arrives_in: Codec) {
    let server = server();
    let (mut raw, protocol) = connect_seeing_subprotocol(offering(&server, "/", offer));
    assert_eq!(protocol.as_deref(), Some(echoed));
    feed_event_arrives_in(&server, &mut raw, asked_in, arrives_in);
    finish(server, vec![raw]);
}

// ---------------------------------------------------------------- raw frames

#[test]
fn contract_request_frame_gets_exactly_the_contract_reply_frame() {
    with_raw("/", |_, raw| {
        raw.send_binary(&hex(CONTRACT_REQUEST));
        assert_eq!(raw.recv_binary(), hex(CONTRACT_REPLY));
    });
}

#[test]
fn error_reply_is_a_binary_map_with_code_message_and_data() {
    with_raw("/", |_, raw| {
        raw.send_msgpack(&json!({"jsonrpc": "2.0", "method": "fail", "id": 1}));
        let bytes = raw.recv_binary();
        // A map of two members (fixmap), not a positional array.
        assert_eq!(bytes[0], 0x82, "{bytes:02x?}");
        let reply: Value = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(
            reply,
            error_reply_with_data(-32050, "Server error", "Server error details", json!(1))
        );

        // No data: no `data` member.
        let reply = raw.request_msgpack(&json!({"method": "noSuchMethod", "params": [], "id": 2}));
        assert_eq!(reply, error_reply(-32601, "Method not found", json!(2)));
    });
}

#[test]
fn ids_are_echoed_as_they_came() {
    with_raw("/", |_, raw| {
        for id in [
            json!(0),
            json!(-5),
            json!(1_u64 << 40),
            json!(u64::MAX),
            json!(1.5),
            json!(""),
            json!("abc"),
        ] {
            let reply = raw.request_msgpack(&json!({"method": "sum", "params": [1, 2], "id": id}));
            assert_eq!(reply, json!({"result": 3, "id": id}), "for id {id}");
        }
    });
}

#[test]
fn notification_gets_no_reply_and_runs_its_handler() {
    with_raw("/", |_, raw| {
        subscribe_msgpack(raw, "newMessage");

        // A result and a handler error: neither is answered for a notification (no id,
        // or a nil id).
        raw.send_msgpack(&json!({"method": "sum", "params": [1, 2]}));
        raw.send_msgpack(&json!({"method": "fail", "id": null}));
        raw.send_msgpack(&json!({"method": "emit", "params": ["newMessage", {"n": 1}]}));
        // The notification to `emit` ran: its event is the next frame.
        assert_eq!(
            raw.recv_msgpack(),
            json!({"notification": "newMessage", "params": {"n": 1}})
        );
        next_frame_is_reply_to_a_msgpack_call(raw);
    });
}

#[test]
fn notification_refused_before_dispatch_is_answered_with_nil_id() {
    with_raw("/", |_, raw| {
        assert_eq!(
            raw.request_msgpack(&json!({"method": "noSuchMethod", "params": [1]})),
            error_reply(-32601, "Method not found", Value::Null)
        );
        assert_eq!(
            raw.request_msgpack(&json!({"method": "cryptic"})),
            error_reply(-32605, "Method forbidden", Value::Null)
        );
        next_frame_is_reply_to_a_msgpack_call(raw);
    });
}

#[test]
fn batch_replies_in_order_in_one_binary_array_skipping_notifications() {
    with_raw("/", |_, raw| {
        let batch = json!([
            {"method": "sum", "params": [1, 2], "id": 1},
            {"method": "sum", "params": [3, 4]},
            {"method": "noSuchMethod", "id": "two"},
            {"method": "echo", "params": {"k": [true, null]}, "id": 3},
            5,
        ]);
        assert_eq!(
            raw.request_msgpack(&batch),
            json!([
                {"result": 3, "id": 1},
                {"error": {"code": -32601, "message": "Method not found"}, "id": "two"},
                {"result": {"k": [true, null]}, "id": 3},
                {"error": {"code": -32600, "message": "Invalid Request"}, "id": null},
            ])
        );

        // A batch of notifications only: nothing at all.
        raw.send_msgpack(&json!([
            {"method": "sum", "params": [1]},
            {"method": "sum", "params": [2]}
        ]));
        next_frame_is_reply_to_a_msgpack_call(raw);

        // More than 15 replies: a wide array header.
        let calls: Vec<Value> = (0..20)
            .map(|i| json!({"method": "sum", "params": [i, 1], "id": i}))
            .collect();
        let replies: Vec<Value> = (0..20).map(|i| json!({"result": i + 1, "id": i})).collect();
        assert_eq!(
            raw.request_msgpack(&Value::from(calls)),
            Value::from(replies)
        );

        // An empty batch is refused as a whole.
        assert_eq!(
            raw.request_msgpack(&json!([])),
            invalid("Invalid array", Value::Null)
        );
    });
}

#[test]
fn nil_params_are_absent_params() {
    with_raw("/", |_, raw| {
        // `echo` takes any value; absent params read as null.
        assert_echoed(raw, &Value::Null);
        assert_eq!(
            raw.request_msgpack(&json!({"method": "echo", "id": 2})),
            json!({"result": null, "id": 2})
        );
        // Nil is not an empty array: `sum` wants a list.
        let reply = raw.request_msgpack(&json!({"method": "sum", "params": null, "id": 3}));
        assert_error_code(&reply, -32602);
        // And `rpc.login` with nil params has no params.
        assert_eq!(
            raw.request_msgpack(&json!({"method": "rpc.login", "params": null, "id": 4})),
            error_reply(-32604, "Params not found", json!(4))
        );
    });
}

#[test]
fn request_without_jsonrpc_works_and_a_wrong_version_does_not() {
    let server = server();
    let mut raw = connect(&server, "/");
    assert_eq!(
        raw.request_msgpack(&json!({"method": "greet", "params": {"name": "Ada"}, "id": "g"})),
        json!({"result": "Hello, Ada!", "id": "g"})
    );
    assert_eq!(
        raw.request_msgpack(&json!({"jsonrpc": "2.0", "method": "sum", "params": [2], "id": 1})),
        json!({"result": 2, "id": 1})
    );
    assert_eq!(
        raw.request_msgpack(&json!({"jsonrpc": "1.0", "method": "sum", "params": [2], "id": 2})),
        invalid("Invalid JSON RPC version", json!(2))
    );
    finish(server, vec![raw]);
}

#[test]
fn values_json_cannot_carry_are_invalid_params_naming_them() {
    with_raw("/", |_, raw| {
        let cases: [(&[u8], &str); 7] = [
            // [bin 01 02]
            (&[0x91, 0xc4, 0x02, 0x01, 0x02], "binary data"),
            // [fixext1 type 1]
            (&[0x91, 0xd4, 0x01, 0x00], "an extension type"),
            // [ext8 of 3 bytes, type 5]
            (&[0x91, 0xc7, 0x03, 0x05, 1, 2, 3], "an extension type"),
            // {1: 2}
            (&[0x81, 0x01, 0x02], "a map key that is not a string"),
            // ["\xff\xfe"]
            (&[0x91, 0xa2, 0xff, 0xfe], "a string that is not UTF-8"),
            // [NaN as float64]
            (
                &[0x91, 0xcb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 0],
                "a NaN or infinite number",
            ),
            // {"a": {"b": bin 07}}: deep inside the params too
            (
                &[0x81, 0xa1, b'a', 0x81, 0xa1, b'b', 0xc4, 0x01, 0x07],
                "binary data",
            ),
        ];
        for (params, problem) in cases {
            let reply = request_raw_params(raw, "echo", params, 7);
            assert_eq!(reply["id"], 7, "{reply}");
            assert_error_code(&reply, -32602);
            assert_eq!(reply["error"]["message"], "Invalid params", "{reply}");
            let data = reply["error"]["data"].as_str().unwrap_or_default();
            assert!(
                data.contains(problem) && data.contains("JSON cannot carry"),
                "the data should name {problem}: {reply}"
            );
        }
        // The built-ins refuse them too: login with a binary password runs no auth.
        // {"username": "foo", "password": bin "bar"}
        let mut login = vec![0x82];
        fixstr(&mut login, "username");
        fixstr(&mut login, "foo");
        fixstr(&mut login, "password");
        login.extend_from_slice(&[0xc4, 0x03, b'b', b'a', b'r']);
        assert_error_code(&request_raw_params(raw, "rpc.login", &login, 8), -32602);
        assert_eq!(
            raw.request_msgpack(&json!({"method": "cryptic", "id": 9})),
            error_reply(-32605, "Method forbidden", json!(9))
        );
        // [bin "feed"]
        let feed = [0x91, 0xc4, 0x04, b'f', b'e', b'e', b'd'];
        assert_error_code(&request_raw_params(raw, "rpc.on", &feed, 10), -32602);
        next_frame_is_reply_to_a_msgpack_call(raw);
    });
}

#[test]
fn wrong_member_types_get_the_contract_errors() {
    with_raw("/", |_, raw| {
        // {"method": 5, "id": 1}
        raw.send_binary(&[
            0x82, 0xa6, b'm', b'e', b't', b'h', b'o', b'd', 0x05, 0xa2, b'i', b'd', 0x01,
        ]);
        assert_eq!(raw.recv_msgpack(), invalid("Invalid method name", json!(1)));
        // {"method": bin "sum", "id": 2}
        let mut frame = vec![0x82];
        fixstr(&mut frame, "method");
        frame.extend_from_slice(&[0xc4, 0x03, b's', b'u', b'm']);
        fixstr(&mut frame, "id");
        frame.push(0x02);
        raw.send_binary(&frame);
        assert_eq!(raw.recv_msgpack(), invalid("Invalid method name", json!(2)));
        // {"method": "sum", "id": [1]}
        assert_eq!(
            raw.request_msgpack(&json!({"method": "sum", "params": [1], "id": [1]})),
            invalid("Invalid id", Value::Null)
        );
        // {1: "sum"}
        raw.send_binary(&[0x81, 0x01, 0xa3, b's', b'u', b'm']);
        assert_eq!(
            raw.recv_msgpack(),
            invalid("map keys must be strings", Value::Null)
        );
        // Params that are neither an array nor a map.
        for params in [json!(5), json!("x"), json!(true)] {
            assert_eq!(
                raw.request_msgpack(&json!({"method": "echo", "params": params, "id": 3})),
                error_reply(-32600, "Invalid Request", json!(3)),
                "for params {params}"
            );
        }
        // No method at all.
        assert_eq!(
            raw.request_msgpack(&json!({"params": [1], "id": 4})),
            error_reply_with_data(-32602, "Invalid params", "Method not specified", json!(4))
        );
        next_frame_is_reply_to_a_msgpack_call(raw);
    });
}

#[test]
fn large_values_round_trip_with_wide_headers() {
    with_raw("/", |_, raw| {
        let long = "x".repeat(70_000);
        let many: Vec<u32> = (0..70_000).collect();
        let wide: serde_json::Map<String, Value> =
            (0..20).map(|i| (format!("k{i}"), Value::from(i))).collect();
        assert_echoed(raw, &json!([long, many, wide]));
    });
}

/// "The same messages, encoded as MessagePack": a handler's result must reach a
/// MessagePack caller as the value a JSON caller gets (rmp-serde on its own writes a
/// unit struct as `[]` and 128-bit integers as 16-byte binary).
#[test]
fn handler_results_mean_the_same_in_msgpack_as_in_json() {
    #[derive(Serialize)]
    struct Done;
    #[derive(Serialize)]
    enum State {
        Idle,
        Busy { jobs: u8 },
    }
    #[derive(Serialize)]
    struct Inner {
        b: i32,
    }
    #[derive(Serialize)]
    struct Flat {
        a: i32,
        #[serde(flatten)]
        inner: Inner,
    }
    let server = server();
    server.register("unitStruct", |_: Value, _| Ok(Done));
    server.register("wideInts", |_: Value, _| {
        Ok((u128::from(u64::MAX), -5_i128, 7_u128))
    });
    server.register("enums", |_: Value, _| {
        Ok((State::Idle, State::Busy { jobs: 2 }))
    });
    server.register("flattened", |_: Value, _| {
        Ok(Flat {
            a: 1,
            inner: Inner { b: 2 },
        })
    });
    server.register("chars", |_: Value, _| Ok(('x', Some('y'), None::<char>)));
    let url = common::url(&server, "/");
    let json_client = Client::builder(&url).timeout(DEADLINE).connect().unwrap();
    let msgpack_client = msgpack_client(&server, "/");
    let mut differ = Vec::new();
    for method in ["unitStruct", "wideInts", "enums", "flattened", "chars"] {
        let in_json = json_client.call(method, ()).unwrap();
        let in_msgpack = msgpack_client.call(method, ());
        if in_msgpack.as_ref().ok() != Some(&in_json) {
            differ.push(format!(
                "{method}: JSON {in_json}, MessagePack {in_msgpack:?}"
            ));
        }
    }
    assert!(differ.is_empty(), "results differ by codec: {differ:#?}");
    json_client.close();
    msgpack_client.close();
    server.close();
}

#[test]
fn allow_raw_values_method_receives_bytes_and_integer_keys() {
    let server = server();
    server
        .register("rawBytes", |(bytes,): (Vec<u8>,), _| Ok(bytes))
        .allow_raw_values();
    // The same handler without the flag.
    server.register("strictBytes", |(bytes,): (Vec<u8>,), _| Ok(bytes));
    server
        .register("rawKeys", |(map,): (BTreeMap<i64, String>,), _| {
            Ok(map
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>())
        })
        .allow_raw_values();
    let mut raw = connect(&server, "/");

    // [bin 01 02 ff]
    let bin = [0x91, 0xc4, 0x03, 0x01, 0x02, 0xff];
    assert_eq!(
        request_raw_params(&mut raw, "rawBytes", &bin, 1),
        json!({"result": [1, 2, 255], "id": 1})
    );
    let reply = request_raw_params(&mut raw, "strictBytes", &bin, 2);
    assert_error_code(&reply, -32602);

    // [{1: "a", -2: "b"}]
    let keys = [0x91, 0x82, 0x01, 0xa1, b'a', 0xfe, 0xa1, b'b'];
    assert_eq!(
        request_raw_params(&mut raw, "rawKeys", &keys, 3),
        json!({"result": ["-2=b", "1=a"], "id": 3})
    );

    // JSON callers are not affected.
    assert_eq!(
        raw.call("rawBytes", json!([[1, 2, 255]])),
        json!({"jsonrpc": "2.0", "result": [1, 2, 255], "id": 1})
    );
    finish(server, vec![raw]);
}

#[test]
fn malformed_binary_frames_are_parse_errors_and_the_connection_keeps_working() {
    with_raw("/", |_, raw| {
        let whole = hex(CONTRACT_REQUEST);
        let mut deep = vec![0x91; 10_000];
        deep.push(0xc0);
        // A request whose params are nested 10,000 deep.
        let mut deep_params = vec![0x91; 10_000];
        deep_params.push(0x01);
        let deep_request = request_with_params("echo", &deep_params, 1);
        let frames: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("reserved byte", vec![0xc1]),
            ("garbage", b"\xc1\xff\x00garbage".to_vec()),
            ("text that is not JSON", b"hello".to_vec()),
            ("truncated", whole[..whole.len() - 1].to_vec()),
            ("truncated in a key", whole[..5].to_vec()),
            ("trailing bytes", [whole.as_slice(), &[0xc0]].concat()),
            ("10,000 deep", deep),
            ("10,000 deep params", deep_request),
            ("str32 of 4 GiB", vec![0xdb, 0xff, 0xff, 0xff, 0xff, b'a']),
            ("bin32 of 4 GiB", vec![0xc6, 0xff, 0xff, 0xff, 0xff, 0]),
            ("array32 of 4 Gi", vec![0xdd, 0xff, 0xff, 0xff, 0xff, 0]),
            ("map32 of 4 Gi", vec![0xdf, 0xff, 0xff, 0xff, 0xff, 0]),
            (
                "params array32 of 4 Gi",
                request_with_params("echo", &[0xdd, 0xff, 0xff, 0xff, 0xff], 1),
            ),
        ];
        for (what, frame) in frames {
            raw.send_binary(&frame);
            let reply = raw.recv_msgpack();
            assert_eq!(reply["id"], Value::Null, "{what}: {reply}");
            assert_eq!(reply["error"]["code"], -32700, "{what}: {reply}");
            assert_eq!(reply["error"]["message"], "Parse error", "{what}: {reply}");
            assert!(
                reply["error"]["data"]
                    .as_str()
                    .is_some_and(|d| !d.is_empty()),
                "{what}: the parser's message is missing: {reply}"
            );
            next_frame_is_reply_to_a_msgpack_call(raw);
        }
    });
}

#[test]
fn deep_but_bounded_params_are_accepted() {
    with_raw("/", |_, raw| {
        let mut nested = json!(1);
        for _ in 0..100 {
            nested = json!([nested]);
        }
        assert_echoed(raw, &nested);
    });
}

#[test]
fn non_map_binary_frames_are_invalid() {
    with_raw("/", |_, raw| {
        for (what, frame) in [
            ("a number", vec![0x05]),
            ("nil", vec![0xc0]),
            ("true", vec![0xc3]),
            ("a string", vec![0xa3, b's', b'u', b'm']),
            ("bin", vec![0xc4, 0x01, 0x00]),
        ] {
            raw.send_binary(&frame);
            assert_eq!(
                raw.recv_msgpack(),
                error_reply(-32600, "Invalid Request", Value::Null),
                "for {what}"
            );
        }
        next_frame_is_reply_to_a_msgpack_call(raw);
    });
}

#[test]
fn binary_frame_holding_json_is_answered_as_json_text() {
    // Even on a connection that declared MessagePack.
    with_raw("/?encoding=msgpack", |_, raw| {
        raw.send_binary(br#" {"jsonrpc":"2.0","method":"sum","params":[5,3],"id":1}"#);
        assert_next_text(raw, r#"{"jsonrpc":"2.0","result":8,"id":1}"#);
        raw.send_binary(br#"[{"jsonrpc":"2.0","method":"sum","params":[1],"id":2}]"#);
        assert_next_text(raw, r#"[{"jsonrpc":"2.0","result":1,"id":2}]"#);
    });
}

#[test]
fn text_json_call_on_a_msgpack_connection_is_answered_in_json() {
    let server = server();
    // Declared at the handshake...
    let mut declared = connect(&server, "/?encoding=msgpack");
    // ...or settled by a first MessagePack frame.
    let mut settled = connect(&server, "/");
    next_frame_is_reply_to_a_msgpack_call(&mut settled);
    for raw in [&mut declared, &mut settled] {
        raw.send_text(r#"{"jsonrpc":"2.0","method":"sum","params":[5,3],"id":1}"#);
        assert_next_text(raw, r#"{"jsonrpc":"2.0","result":8,"id":1}"#);
        // And MessagePack again after it.
        next_frame_is_reply_to_a_msgpack_call(raw);
    }
    finish(server, vec![declared, settled]);
}

// ---------------------------------------------------------------- codec selection

#[test]
fn query_declared_msgpack_connection_gets_events_as_the_contract_frame() {
    with_raw("/?encoding=msgpack", |server, raw| {
        feed_event_arrives_in(server, raw, Codec::Msgpack, Codec::Msgpack);
    });
}

#[test]
fn query_declared_msgpack_connection_subscribing_in_json_gets_events_in_msgpack() {
    // The reply to a JSON request is JSON; the connection's events stay MessagePack.
    with_raw("/?encoding=msgpack", |server, raw| {
        feed_event_arrives_in(server, raw, Codec::Json, Codec::Msgpack);
    });
}

#[test]
fn query_declared_json_connection_gets_events_in_json_after_a_msgpack_subscribe() {
    with_raw("/?encoding=json", |server, raw| {
        feed_event_arrives_in(server, raw, Codec::Msgpack, Codec::Json);
    });
}

#[test]
fn subprotocol_msgpack_is_echoed_and_selects_msgpack_events() {
    // Subscribing in JSON: only the declaration can make the events MessagePack.
    subprotocol_selects_events("msgpack", "msgpack", Codec::Json, Codec::Msgpack);
}

#[test]
fn subprotocol_msgpack_in_a_list_of_offers_is_the_one_echoed() {
    subprotocol_selects_events("chat.v2, msgpack", "msgpack", Codec::Json, Codec::Msgpack);
}

#[test]
fn subprotocol_json_is_echoed_and_beats_a_msgpack_first_frame() {
    subprotocol_selects_events("json", "json", Codec::Msgpack, Codec::Json);
}

#[test]
fn handshake_without_a_subprotocol_offer_names_none() {
    let server = server();
    let request = common::url(&server, "/?encoding=msgpack")
        .into_client_request()
        .unwrap();
    let (raw, protocol) = connect_seeing_subprotocol(request);
    assert_eq!(protocol, None);
    finish(server, vec![raw]);
}

#[test]
fn without_a_declaration_the_first_frame_decides_the_event_codec() {
    let server = server();
    let mut msgpack_first = connect(&server, "/");
    let mut json_first = connect(&server, "/");
    subscribe_feed(&mut msgpack_first, Codec::Msgpack);
    subscribe_feed(&mut json_first, Codec::Json);
    // Later frames in the other codec are answered in that codec...
    assert_eq!(
        msgpack_first.call("sum", json!([1, 2])),
        json!({"jsonrpc": "2.0", "result": 3, "id": 1})
    );
    next_frame_is_reply_to_a_msgpack_call(&mut json_first);

    // ...but do not change the connection's codec.
    emit_feed(&server);
    assert_next_feed_event(&mut msgpack_first, Codec::Msgpack);
    assert_next_feed_event(&mut json_first, Codec::Json);
    finish(server, vec![msgpack_first, json_first]);
}

// ---------------------------------------------------------------- mixed clients

#[test]
fn json_and_msgpack_subscribers_get_the_same_event_each_in_its_codec() {
    let server = server();
    let mut json_client = connect(&server, "/");
    let mut msgpack_client = connect(&server, "/?encoding=msgpack");
    subscribe_json(&mut json_client, "newsUpdate");
    subscribe_msgpack(&mut msgpack_client, "newsUpdate");

    let params = json!({
        "headline": "héllo \u{1F600}",
        "price": 42.5,
        "count": -7,
        "big": u64::MAX,
        "tags": ["a", "b"],
        "nested": {"x": null, "ok": true, "empty": {}, "list": []},
    });
    for (emitted, sent) in [
        (params.clone(), params),
        (json!([1, "two"]), json!([1, "two"])),
        (json!(5), json!([5])),
        (Value::Null, json!([])),
    ] {
        server.emit("newsUpdate", &emitted).unwrap();
        let expected = json!({"notification": "newsUpdate", "params": sent});
        assert_eq!(recv_json_text(&mut json_client), expected);
        assert_eq!(msgpack_client.recv_msgpack(), expected);
    }
    finish(server, vec![json_client, msgpack_client]);
}

// ---------------------------------------------------------------- the Rust client

/// Params that say whether they were read straight from MessagePack bytes (rmp-serde is
/// not human readable) or from JSON.
struct WireFormat(&'static str);

impl<'de> Deserialize<'de> for WireFormat {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let format = if d.is_human_readable() {
            "json"
        } else {
            "msgpack"
        };
        serde::de::IgnoredAny::deserialize(d)?;
        Ok(WireFormat(format))
    }
}

fn msgpack_client(server: &Server, path: &str) -> Client {
    Client::builder(&common::url(server, path))
        .msgpack(true)
        .timeout(DEADLINE)
        .connect()
        .expect("connect to the fixture server")
}

/// An event callback that forwards every params value into a channel.
fn forwarder() -> (impl Fn(&Value) + Send + Sync + 'static, Receiver<Value>) {
    let (tx, rx) = mpsc::channel();
    (move |params: &Value| drop(tx.send(params.clone())), rx)
}

fn rpc_error(result: Result<Value, Error>) -> RpcError {
    match result {
        Err(Error::Rpc(e)) => e,
        other => panic!("expected an RPC error, got {other:?}"),
    }
}

fn login(client: &Client) {
    let answer = client
        .login(json!({"username": "foo", "password": "bar"}))
        .expect("good credentials are accepted");
    assert_eq!(answer, json!(true));
}

/// A method `gate` that says when it has started, then blocks until released (or the
/// deadline); returns the started signal and the release.
fn install_gate(server: &Server) -> (Receiver<()>, mpsc::Sender<()>) {
    let (started_tx, started_rx) = mpsc::channel::<()>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let started_tx = Mutex::new(started_tx);
    let release_rx = Mutex::new(release_rx);
    server.register("gate", move |_: Value, _| {
        let _ = started_tx.lock().unwrap().send(());
        let _ = release_rx.lock().unwrap().recv_timeout(DEADLINE);
        Ok("released")
    });
    (started_rx, release_tx)
}

/// Run `test` with a MessagePack `Client` connected at `path` to a fresh `server()`,
/// then close both.
fn with_msgpack_client(path: &str, test: impl FnOnce(&Server, &Client)) {
    let server = server();
    let client = msgpack_client(&server, path);
    test(&server, &client);
    client.close();
    server.close();
}

/// Assert that `e` has `code` and `message`.
#[track_caller]
fn assert_code_and_message(e: &RpcError, code: i64, message: &str) {
    assert_eq!((e.code, e.message.as_str()), (code, message));
}

#[test]
fn msgpack_client_sends_and_reads_messagepack_frames() {
    let server = server();
    server
        .register("wireFormat", |p: WireFormat, _| Ok(p.0))
        .allow_raw_values();
    let client = msgpack_client(&server, "/");
    let json_client = Client::connect(&common::url(&server, "/")).unwrap();

    assert_eq!(client.call("wireFormat", [1]).unwrap(), json!("msgpack"));
    assert_eq!(json_client.call("wireFormat", [1]).unwrap(), json!("json"));

    client.close();
    json_client.close();
    server.close();
}

#[test]
fn msgpack_client_call_and_call_as_return_the_result() {
    with_msgpack_client("/", |_, client| {
        assert_eq!(client.call("sum", [5, 3]).unwrap(), json!(8));
        assert_eq!(client.call_as::<i64>("sum", [1, 2, 3]).unwrap(), 6);
        assert_eq!(client.call_as::<f64>("sum", [0.25, 0.5]).unwrap(), 0.75);
        let greeting: String = client.call_as("greet", json!({"name": "Ada"})).unwrap();
        assert_eq!(greeting, "Hello, Ada!");
        let value = json!({"a": [1, "b", null, true, -2.5, u64::MAX], "é": {}});
        assert_eq!(client.call("echo", &value).unwrap(), value);
        // No params and a handler returning nothing.
        assert_eq!(client.call("echo", ()).unwrap(), Value::Null);
        assert_eq!(client.call("update", json!([1])).unwrap(), Value::Null);
        let wrong = client.call_as::<String>("sum", [5, 3]);
        assert!(matches!(wrong, Err(Error::Codec(_))), "{wrong:?}");
    });
}

#[test]
fn msgpack_client_call_timeout_gives_timeout_and_the_client_keeps_working() {
    let server = server();
    let (started, release) = install_gate(&server);
    let client = msgpack_client(&server, "/");

    let began = Instant::now();
    let slow = client.call_timeout("gate", (), Duration::from_millis(100));
    assert!(matches!(slow, Err(Error::Timeout)), "{slow:?}");
    assert!(
        began.elapsed() < Duration::from_secs(2),
        "the timeout took {:?}",
        began.elapsed()
    );
    started.recv_timeout(DEADLINE).expect("the handler ran");
    // While the handler still holds its call.
    assert_eq!(client.call("sum", [2, 2]).unwrap(), json!(4));
    // Its late reply is dropped without harm.
    release.send(()).unwrap();
    assert_eq!(
        client
            .call_timeout("sum", [3, 3], Duration::from_secs(5))
            .unwrap(),
        json!(6)
    );

    client.close();
    server.close();
}

#[test]
fn msgpack_client_notify_runs_the_method() {
    with_msgpack_client("/", |_, client| {
        let (callback, events) = forwarder();
        client.subscribe("newMessage", callback).unwrap();

        client
            .notify("emit", json!(["newMessage", {"text": "notified"}]))
            .unwrap();
        assert_eq!(
            events.recv_timeout(DEADLINE).expect("the emitted event"),
            json!({"text": "notified"})
        );
        // A notification that fails sends nothing back, and the client carries on.
        client.notify("fail", ()).unwrap();
        assert_eq!(client.call("sum", [1, 1]).unwrap(), json!(2));
    });
}

#[test]
fn msgpack_client_subscribe_gets_params_and_unsubscribe_stops_them() {
    with_msgpack_client("/", |server, client| {
        let (callback, news) = forwarder();
        client.subscribe("newsUpdate", callback).unwrap();
        let (callback, marker) = forwarder();
        client.subscribe("newMessage", callback).unwrap();

        for (emitted, received) in [
            (
                json!({"headline": "hi", "n": [1, 2.5]}),
                json!({"headline": "hi", "n": [1, 2.5]}),
            ),
            (json!([1, "x"]), json!([1, "x"])),
            (json!(5), json!([5])),
        ] {
            server.emit("newsUpdate", &emitted).unwrap();
            assert_eq!(news.recv_timeout(DEADLINE).unwrap(), received);
        }

        client.unsubscribe("newsUpdate").unwrap();
        server.emit("newsUpdate", json!({"n": "after"})).unwrap();
        // Events reach one connection in the order they were emitted: once the marker is
        // in, "after" would have been too.
        server.emit("newMessage", json!({"marker": true})).unwrap();
        assert_eq!(
            marker.recv_timeout(DEADLINE).unwrap(),
            json!({"marker": true})
        );
        let late = news.try_recv();
        assert!(late.is_err(), "event after unsubscribe: {late:?}");

        // The server's refusal of an unknown event comes back.
        match client.subscribe("noSuchEvent", |_| {}) {
            Err(Error::Subscribe { event, reason }) => {
                assert_eq!(
                    (event.as_str(), reason.as_str()),
                    ("noSuchEvent", "provided event invalid")
                );
            }
            other => panic!("expected Error::Subscribe, got {other:?}"),
        }
    });
}

#[test]
fn msgpack_client_login_opens_protected_methods_and_events() {
    with_msgpack_client("/", |server, client| {
        let forbidden = rpc_error(client.call("cryptic", ()));
        assert_code_and_message(&forbidden, -32605, "Method forbidden");
        match client.subscribe("secretFeed", |_| {}) {
            Err(Error::Rpc(e)) => assert_code_and_message(&e, -32606, "Event forbidden"),
            other => panic!("expected Error::Rpc -32606, got {other:?}"),
        }
        let bad = client.login(json!({"username": "foo", "password": "wrong"}));
        assert!(matches!(bad, Err(Error::AuthFailed)), "{bad:?}");

        login(client);
        assert_eq!(client.call("cryptic", ()).unwrap(), json!("boohoo"));
        let (callback, secrets) = forwarder();
        client.subscribe("secretFeed", callback).unwrap();
        server.emit("secretFeed", json!({"s": 1})).unwrap();
        assert_eq!(secrets.recv_timeout(DEADLINE).unwrap(), json!({"s": 1}));
    });
}

#[test]
fn msgpack_client_list_methods_names_the_namespace_methods() {
    with_msgpack_client("/", |_, client| {
        let methods = client.list_methods().unwrap();
        common::assert_lists_methods(
            &methods,
            &[
                "sum",
                "echo",
                "fail",
                "cryptic",
                "emit",
                "rpc.login",
                "__listMethods",
            ],
        );
    });
}

#[test]
fn msgpack_client_error_replies_keep_code_message_and_data() {
    with_msgpack_client("/", |_, client| {
        assert_eq!(
            rpc_error(client.call("fail", ())),
            RpcError {
                code: -32050,
                message: "Server error".into(),
                data: Some(json!("Server error details")),
            }
        );
        assert_eq!(
            rpc_error(client.call("noSuchMethod", [1])),
            RpcError {
                code: -32601,
                message: "Method not found".into(),
                data: None,
            }
        );
        let invalid = rpc_error(client.call("sum", json!({"not": "a list"})));
        assert_code_and_message(&invalid, -32602, "Invalid params");
        assert!(
            invalid
                .data
                .as_ref()
                .and_then(Value::as_str)
                .is_some_and(|d| !d.is_empty()),
            "{invalid:?}"
        );
        // The connection is still good afterwards.
        assert_eq!(client.call("sum", [1, 1]).unwrap(), json!(2));
    });
}

#[test]
fn msgpack_client_namespaces_have_their_own_methods_and_events() {
    with_msgpack_client("/chat", |server, chat| {
        assert_eq!(chat.call("sum", [20, 22]).unwrap(), json!(42));
        assert_eq!(rpc_error(chat.call("cryptic", ())).code, -32601);
        let mut methods = chat.list_methods().unwrap();
        methods.sort();
        assert_eq!(methods, ["__listMethods", "sum"]);
        let (callback, events) = forwarder();
        chat.subscribe("chatMessage", callback).unwrap();
        server
            .namespace("/chat")
            .emit("chatMessage", json!({"m": 1}))
            .unwrap();
        assert_eq!(events.recv_timeout(DEADLINE).unwrap(), json!({"m": 1}));
    });
}

#[test]
fn msgpack_client_pending_calls_fail_with_connection_lost_when_the_connection_drops() {
    let server = server();
    let (started, release) = install_gate(&server);
    let client = Client::builder(&common::url(&server, "/"))
        .msgpack(true)
        .reconnect(false)
        .connect()
        .unwrap();

    let caller = {
        let client = client.clone();
        std::thread::spawn(move || {
            let result = client.call_timeout("gate", (), DEADLINE);
            (result, Instant::now())
        })
    };
    started.recv_timeout(DEADLINE).expect("the handler started");
    let closed_at = Instant::now();
    server.namespace("/").close();

    let (result, failed_at) = caller.join().unwrap();
    assert!(matches!(result, Err(Error::ConnectionLost)), "{result:?}");
    let waited = failed_at.duration_since(closed_at);
    assert!(
        waited < Duration::from_secs(2),
        "the call failed only after {waited:?}"
    );

    release.send(()).unwrap();
    client.close();
    server.close();
}
