//! The wire contract of PROTOCOL.md, checked frame by frame over real loopback sockets
//! with a raw WebSocket client: every row of the error table and every built-in
//! behaviour, one test each.

mod common;

use common::Raw;
use serde_json::{Value, json};
use tungstenite::Message;
use wsrpc::{RpcError, Server};

/// The fixture server; `close()` waits briefly for clients that do not answer.
fn server() -> Server {
    common::start_with(Server::builder().config(common::quick_close(200)))
}

fn connect(server: &Server, path: &str) -> Raw {
    Raw::connect(&common::url(server, path))
}

/// Drop the clients (so nobody holds the close handshake up), then close the server.
fn finish(server: Server, clients: Vec<Raw>) {
    drop(clients);
    server.close();
}

/// Start the fixture server, connect one raw client to `/`, run `test` with both, then
/// drop the client (and any other the test opened) and close the server.
fn with_client(test: impl FnOnce(&Server, &mut Raw)) {
    let server = server();
    let mut raw = connect(&server, "/");
    test(&server, &mut raw);
    finish(server, vec![raw]);
}

/// Send `frame` as text and return the next frame exactly as it came.
fn exchange(raw: &mut Raw, frame: &str) -> String {
    raw.send_text(frame);
    raw.recv_text()
}

/// Send `frame` as text and assert that the next frame is exactly `expected`.
fn assert_reply(raw: &mut Raw, frame: &str, expected: &str) {
    assert_eq!(exchange(raw, frame), expected, "for frame {frame:?}");
}

/// On one fresh client of `/`, send each of `frames` in turn and assert that each is
/// answered exactly `expected`.
fn assert_answers<F: AsRef<str>>(frames: impl IntoIterator<Item = F>, expected: &str) {
    with_client(|_, raw| {
        for frame in frames {
            assert_reply(raw, frame.as_ref(), expected);
        }
    });
}

/// `method` (`rpc.on` or `rpc.off`) with a known and an unknown event answers a result
/// for each.
fn assert_result_per_event(raw: &mut Raw, method: &str) {
    assert_reply(
        raw,
        &format!(
            r#"{{"jsonrpc":"2.0","method":"{method}","params":["newsUpdate","nope"],"id":1}}"#
        ),
        r#"{"jsonrpc":"2.0","result":{"newsUpdate":"ok","nope":"provided event invalid"},"id":1}"#,
    );
}

/// Assert that the next frame is a text frame (not binary) holding exactly `expected`.
fn assert_text_frame(raw: &mut Raw, expected: &str) {
    match raw.recv_message() {
        Message::Text(text) => assert_eq!(text.as_str(), expected),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

/// Log in as the fixture's user `foo` with `password`; returns the reply.
fn login(raw: &mut Raw, password: &str) -> Value {
    raw.call(
        "rpc.login",
        json!({"username": "foo", "password": password}),
    )
}

/// Subscribe with a call and check that every name was accepted.
fn subscribe(raw: &mut Raw, events: &[&str]) {
    let reply = raw.call("rpc.on", json!(events));
    let expected: serde_json::Map<String, Value> = events
        .iter()
        .map(|e| (e.to_string(), Value::from("ok")))
        .collect();
    assert_eq!(reply["result"], Value::Object(expected), "{reply}");
}

/// The exact text of an event frame.
fn event_frame(name: &str, params: &str) -> String {
    format!(r#"{{"notification":"{name}","params":{params}}}"#)
}

/// Assert that the next frame is the event `name` with exactly `params` (JSON text).
fn assert_event(raw: &mut Raw, name: &str, params: &str) {
    assert_eq!(raw.recv_text(), event_frame(name, params));
}

/// Assert that the next frame is the reply to a fresh `sum` call: nothing was sent
/// in between.
fn next_frame_is_reply_to_a_call(raw: &mut Raw) {
    assert_reply(
        raw,
        r#"{"jsonrpc":"2.0","method":"sum","params":[20,22],"id":"probe"}"#,
        r#"{"jsonrpc":"2.0","result":42,"id":"probe"}"#,
    );
}

/// A call and a failing call, both with the id `id` (JSON text), are answered with it.
fn assert_real_id(id: &str) {
    with_client(|_, raw| {
        assert_reply(
            raw,
            &format!(r#"{{"jsonrpc":"2.0","method":"sum","params":[1,2],"id":{id}}}"#),
            &format!(r#"{{"jsonrpc":"2.0","result":3,"id":{id}}}"#),
        );
        assert_reply(
            raw,
            &format!(r#"{{"jsonrpc":"2.0","method":"fail","id":{id}}}"#),
            &format!(
                r#"{{"jsonrpc":"2.0","error":{{"code":-32050,"message":"Server error","data":"Server error details"}},"id":{id}}}"#
            ),
        );
    });
}

// ---------------------------------------------------------------- -32700 Parse error

#[test]
fn parse_error_has_parser_message_and_null_id() {
    with_client(|_, raw| {
        for frame in [
            r#"{"jsonrpc":"2.0","method":"sum","params":[1,2"#,
            r#"{"jsonrpc":"2.0","method":}"#,
            "not json at all",
            "[1,",
            "",
            r#"{"jsonrpc":"2.0","method":"sum","params":[1],"id":1} trailing"#,
        ] {
            let reply = raw.request(frame);
            let data = reply["error"]["data"].clone();
            assert!(
                data.as_str().is_some_and(|d| !d.is_empty()),
                "parse error for {frame:?} should carry the parser's message: {reply}"
            );
            let expected = json!({
                "jsonrpc": "2.0",
                "error": {"code": -32700, "message": "Parse error", "data": data},
                "id": null
            });
            assert_eq!(reply, expected, "for frame {frame:?}");
        }
    });
}

// ---------------------------------------------------------------- -32600 Invalid Request

#[test]
fn non_object_request_is_invalid_request() {
    assert_answers(
        ["5", r#""sum""#, "true", "null", "-1.5"],
        r#"{"jsonrpc":"2.0","error":{"code":-32600,"message":"Invalid Request"},"id":null}"#,
    );
}

#[test]
fn wrong_jsonrpc_version_is_invalid_request_keeping_id() {
    with_client(|_, raw| {
        let cases = [
            (
                r#"{"jsonrpc":"1.0","method":"sum","params":[1],"id":7}"#,
                "7",
            ),
            (
                r#"{"jsonrpc":2.0,"method":"sum","params":[1],"id":"s"}"#,
                r#""s""#,
            ),
            (
                r#"{"jsonrpc":null,"method":"sum","params":[1],"id":8}"#,
                "8",
            ),
        ];
        for (frame, id) in cases {
            assert_reply(
                raw,
                frame,
                &format!(
                    r#"{{"jsonrpc":"2.0","error":{{"code":-32600,"message":"Invalid Request","data":"Invalid JSON RPC version"}},"id":{id}}}"#
                ),
            );
        }
    });
}

#[test]
fn missing_jsonrpc_is_invalid_request_keeping_id() {
    assert_answers(
        [r#"{"method":"sum","params":[1,2],"id":9}"#],
        r#"{"jsonrpc":"2.0","error":{"code":-32600,"message":"Invalid Request","data":"Invalid JSON RPC version"},"id":9}"#,
    );
}

#[test]
fn non_string_method_is_invalid_method_name() {
    assert_answers(
        ["5", r#"["sum"]"#, r#"{"name":"sum"}"#, "true"]
            .map(|method| format!(r#"{{"jsonrpc":"2.0","method":{method},"params":[1],"id":3}}"#)),
        r#"{"jsonrpc":"2.0","error":{"code":-32600,"message":"Invalid Request","data":"Invalid method name"},"id":3}"#,
    );
}

#[test]
fn scalar_params_are_invalid_request() {
    assert_answers(
        [r#""5,3""#, r#""""#, "5", "0", "true", "false"].map(|params| {
            format!(r#"{{"jsonrpc":"2.0","method":"sum","params":{params},"id":4}}"#)
        }),
        r#"{"jsonrpc":"2.0","error":{"code":-32600,"message":"Invalid Request"},"id":4}"#,
    );
}

#[test]
fn empty_batch_is_invalid_array() {
    assert_answers(
        ["[]", " [ ] "],
        r#"{"jsonrpc":"2.0","error":{"code":-32600,"message":"Invalid Request","data":"Invalid array"},"id":null}"#,
    );
}

#[test]
fn batch_item_that_is_not_an_object_is_invalid_request() {
    assert_answers(
        [r#"[1,{"jsonrpc":"2.0","method":"sum","params":[1,2],"id":2}]"#],
        r#"[{"jsonrpc":"2.0","error":{"code":-32600,"message":"Invalid Request"},"id":null},{"jsonrpc":"2.0","result":3,"id":2}]"#,
    );
}

// ---------------------------------------------------------------- -32602 Invalid params

#[test]
fn missing_or_empty_method_is_method_not_specified() {
    assert_answers(
        [
            r#"{"jsonrpc":"2.0","params":[1],"id":5}"#,
            r#"{"jsonrpc":"2.0","method":"","params":[1],"id":5}"#,
            r#"{"jsonrpc":"2.0","method":null,"params":[1],"id":5}"#,
        ],
        r#"{"jsonrpc":"2.0","error":{"code":-32602,"message":"Invalid params","data":"Method not specified"},"id":5}"#,
    );
}

#[test]
fn params_the_handler_cannot_deserialize_are_invalid_params() {
    with_client(|_, raw| {
        let cases = [
            ("sum", json!({"a": 1})),
            ("sum", json!(["x"])),
            ("greet", json!({"nom": "x"})),
            ("greet", json!([1])),
            ("sleep", json!(["soon"])),
        ];
        for (method, params) in cases {
            let reply = raw.call(method, params.clone());
            let data = reply["error"]["data"].clone();
            assert!(data.is_string(), "{method} {params}: {reply}");
            assert_eq!(
                reply,
                json!({
                    "jsonrpc": "2.0",
                    "error": {"code": -32602, "message": "Invalid params", "data": data},
                    "id": 1
                }),
                "{method} {params}"
            );
        }
        // The same methods work with params they can read.
        assert_eq!(
            raw.call("greet", json!({"name": "Ann"}))["result"],
            "Hello, Ann!"
        );
    });
}

// ---------------------------------------------------------------- -32601 Method not found

#[test]
fn unknown_method_is_method_not_found() {
    with_client(|server, raw| {
        assert_reply(
            raw,
            r#"{"jsonrpc":"2.0","method":"nope","params":[],"id":1}"#,
            r#"{"jsonrpc":"2.0","error":{"code":-32601,"message":"Method not found"},"id":1}"#,
        );
        // A method of another namespace is not found either.
        let mut chat = connect(server, "/chat");
        assert_reply(
            &mut chat,
            r#"{"jsonrpc":"2.0","method":"greet","params":{"name":"x"},"id":2}"#,
            r#"{"jsonrpc":"2.0","error":{"code":-32601,"message":"Method not found"},"id":2}"#,
        );
    });
}

#[test]
fn login_without_auth_handler_is_method_not_found() {
    let server = server();
    let mut chat = connect(&server, "/chat");
    assert_reply(
        &mut chat,
        r#"{"jsonrpc":"2.0","method":"rpc.login","params":{"username":"foo","password":"bar"},"id":1}"#,
        r#"{"jsonrpc":"2.0","error":{"code":-32601,"message":"Method not found"},"id":1}"#,
    );
    finish(server, vec![chat]);
}

// ---------------------------------------------------------------- login and protection

#[test]
fn login_without_params_is_params_not_found() {
    assert_answers(
        [
            r#"{"jsonrpc":"2.0","method":"rpc.login","id":1}"#,
            r#"{"jsonrpc":"2.0","method":"rpc.login","params":null,"id":1}"#,
        ],
        r#"{"jsonrpc":"2.0","error":{"code":-32604,"message":"Params not found"},"id":1}"#,
    );
}

#[test]
fn protected_method_before_login_is_method_forbidden() {
    with_client(|_, raw| {
        let call = r#"{"jsonrpc":"2.0","method":"cryptic","id":1}"#;
        let forbidden =
            r#"{"jsonrpc":"2.0","error":{"code":-32605,"message":"Method forbidden"},"id":1}"#;
        assert_reply(raw, call, forbidden);
        // A login the handler refuses answers false and opens nothing.
        assert_eq!(
            login(raw, "nope"),
            json!({"jsonrpc": "2.0", "result": false, "id": 1})
        );
        assert_reply(raw, call, forbidden);
        // The right one answers true and opens the method.
        assert_eq!(
            login(raw, "bar"),
            json!({"jsonrpc": "2.0", "result": true, "id": 1})
        );
        assert_reply(raw, call, r#"{"jsonrpc":"2.0","result":"boohoo","id":1}"#);
    });
}

#[test]
fn login_opens_protected_methods_only_for_its_connection() {
    with_client(|server, a| {
        let mut b = connect(server, "/");
        assert_eq!(login(a, "bar")["result"], true);
        assert_eq!(a.call("cryptic", json!([]))["result"], "boohoo");
        assert_eq!(b.call("cryptic", json!([]))["error"]["code"], -32605);
    });
}

#[test]
fn protected_event_before_login_is_event_forbidden() {
    with_client(|server, raw| {
        assert_reply(
            raw,
            r#"{"jsonrpc":"2.0","method":"rpc.on","params":["secretFeed"],"id":1}"#,
            r#"{"jsonrpc":"2.0","error":{"code":-32606,"message":"Event forbidden"},"id":1}"#,
        );
        // After login the same event can be subscribed to, and its events arrive.
        assert_eq!(login(raw, "bar")["result"], true);
        subscribe(raw, &["secretFeed"]);
        server.emit("secretFeed", json!({"s": 1})).unwrap();
        assert_event(raw, "secretFeed", r#"{"s":1}"#);
    });
}

#[test]
fn forbidden_event_in_a_list_subscribes_none_of_it() {
    with_client(|server, raw| {
        assert_reply(
            raw,
            r#"{"jsonrpc":"2.0","method":"rpc.on","params":["newsUpdate","secretFeed"],"id":1}"#,
            r#"{"jsonrpc":"2.0","error":{"code":-32606,"message":"Event forbidden"},"id":1}"#,
        );
        // Nothing was recorded: an event of newsUpdate does not arrive. The marker event
        // is emitted after it through the same queue, so it would come second.
        subscribe(raw, &["newMessage"]);
        server.emit("newsUpdate", json!(["leaked"])).unwrap();
        server.emit("newMessage", json!(["marker"])).unwrap();
        assert_event(raw, "newMessage", r#"["marker"]"#);
        next_frame_is_reply_to_a_call(raw);
        // And subscribing to newsUpdate now is a first subscription, not a repeat.
        subscribe(raw, &["newsUpdate"]);
    });
}

// ---------------------------------------------------------------- rpc.on / rpc.off

#[test]
fn subscribe_without_params_is_event_not_provided() {
    assert_answers(
        ["rpc.on", "rpc.off"].into_iter().flat_map(|method| {
            ["", r#","params":null"#].map(move |params| {
                format!(r#"{{"jsonrpc":"2.0","method":"{method}"{params},"id":1}}"#)
            })
        }),
        r#"{"jsonrpc":"2.0","error":{"code":-32000,"message":"Event not provided"},"id":1}"#,
    );
}

#[test]
fn subscribe_with_object_params_is_invalid_params() {
    with_client(|_, raw| {
        for method in ["rpc.on", "rpc.off"] {
            let reply = raw.call(method, json!({"event": "newsUpdate"}));
            assert_eq!(reply["error"]["code"], -32602, "{method}: {reply}");
            assert_eq!(
                reply["error"]["message"], "Invalid params",
                "{method}: {reply}"
            );
            assert_eq!(reply["id"], 1);
        }
        // The server is still there and the connection still works.
        assert_eq!(raw.call("sum", json!([1, 1]))["result"], 2);
    });
}

#[test]
fn subscribe_answers_a_result_per_event() {
    with_client(|_, raw| {
        assert_result_per_event(raw, "rpc.on");
        assert_eq!(
            raw.call("rpc.on", json!(["newsUpdate", "newMessage"]))["result"],
            json!({
                "newsUpdate": "socket has already been subscribed to event",
                "newMessage": "ok"
            })
        );
        // An empty list subscribes to nothing (it is not "no params").
        assert_eq!(raw.call("rpc.on", json!([]))["result"], json!({}));
        assert_eq!(raw.call("rpc.off", json!([]))["result"], json!({}));
        // An event of another namespace is not an event here.
        assert_eq!(
            raw.call("rpc.on", json!(["chatMessage"]))["result"],
            json!({"chatMessage": "provided event invalid"})
        );
    });
}

#[test]
fn unsubscribe_answers_a_result_per_event_and_stops_events() {
    with_client(|server, raw| {
        subscribe(raw, &["newsUpdate", "newMessage"]);
        assert_result_per_event(raw, "rpc.off");
        assert_eq!(
            raw.call("rpc.off", json!(["newsUpdate", "secretFeed"]))["result"],
            json!({"newsUpdate": "not subscribed", "secretFeed": "not subscribed"})
        );
        // newsUpdate no longer arrives; newMessage, emitted after it, does.
        server.emit("newsUpdate", json!(["gone"])).unwrap();
        server.emit("newMessage", json!(["marker"])).unwrap();
        assert_event(raw, "newMessage", r#"["marker"]"#);
    });
}

// ---------------------------------------------------------------- handler errors

#[test]
fn structured_handler_error_is_passed_through() {
    assert_answers(
        [r#"{"jsonrpc":"2.0","method":"fail","params":[],"id":1}"#],
        r#"{"jsonrpc":"2.0","error":{"code":-32050,"message":"Server error","data":"Server error details"},"id":1}"#,
    );
}

#[test]
fn plain_handler_error_is_a_server_error_without_a_type_name() {
    let server = server();
    server.register(
        "parse_int",
        |(text,): (String,), _| -> Result<i64, RpcError> { Ok(text.parse::<i64>()?) },
    );
    let mut raw = connect(&server, "/");
    assert_eq!(raw.call("parse_int", json!(["42"]))["result"], 42);
    assert_reply(
        &mut raw,
        r#"{"jsonrpc":"2.0","method":"parse_int","params":["x"],"id":1}"#,
        r#"{"jsonrpc":"2.0","error":{"code":-32000,"message":"Error","data":"invalid digit found in string"},"id":1}"#,
    );
    finish(server, vec![raw]);
}

// ---------------------------------------------------------------- notifications and ids

#[test]
fn refusals_before_dispatch_answer_notifications_with_null_id() {
    with_client(|_, raw| {
        let cases = [
            (
                r#"{"jsonrpc":"2.0","method":"nope","params":[]}"#,
                r#"{"code":-32601,"message":"Method not found"}"#,
            ),
            (
                r#"{"jsonrpc":"2.0","method":"cryptic"}"#,
                r#"{"code":-32605,"message":"Method forbidden"}"#,
            ),
            (
                r#"{"jsonrpc":"2.0","method":"rpc.login"}"#,
                r#"{"code":-32604,"message":"Params not found"}"#,
            ),
            (
                r#"{"jsonrpc":"2.0","method":"rpc.on"}"#,
                r#"{"code":-32000,"message":"Event not provided"}"#,
            ),
            (
                r#"{"jsonrpc":"2.0","method":"rpc.on","params":["secretFeed"]}"#,
                r#"{"code":-32606,"message":"Event forbidden"}"#,
            ),
            (
                r#"{"jsonrpc":"1.0","method":"sum","params":[1]}"#,
                r#"{"code":-32600,"message":"Invalid Request","data":"Invalid JSON RPC version"}"#,
            ),
            (
                r#"{"jsonrpc":"2.0","method":7}"#,
                r#"{"code":-32600,"message":"Invalid Request","data":"Invalid method name"}"#,
            ),
            (
                r#"{"jsonrpc":"2.0","method":"sum","params":5}"#,
                r#"{"code":-32600,"message":"Invalid Request"}"#,
            ),
            (
                r#"{"jsonrpc":"2.0","params":[1]}"#,
                r#"{"code":-32602,"message":"Invalid params","data":"Method not specified"}"#,
            ),
        ];
        for (frame, error) in cases {
            assert_reply(
                raw,
                frame,
                &format!(r#"{{"jsonrpc":"2.0","error":{error},"id":null}}"#),
            );
        }
    });
}

#[test]
fn handler_errors_for_notifications_send_nothing() {
    with_client(|_, raw| {
        raw.send_text(r#"{"jsonrpc":"2.0","method":"fail","params":[]}"#);
        raw.send_text(r#"{"jsonrpc":"2.0","method":"nope"}"#);
        // That second one is refused before dispatch, so it is answered (with id null)...
        assert_eq!(
            raw.recv_text(),
            r#"{"jsonrpc":"2.0","error":{"code":-32601,"message":"Method not found"},"id":null}"#
        );
        // ...but `fail` was not, and neither is a notification the handler cannot read.
        raw.send_text(r#"{"jsonrpc":"2.0","method":"sum","params":{"a":1}}"#);
        raw.send_text(r#"{"jsonrpc":"2.0","method":"fail"}"#);
        next_frame_is_reply_to_a_call(raw);
    });
}

#[test]
fn notification_runs_its_handler_and_gets_no_reply() {
    with_client(|_, raw| {
        subscribe(raw, &["newsUpdate"]);
        // The fixture's `emit`, sent as a notification: its effect (the event) arrives,
        // its result (true) does not.
        raw.send_text(r#"{"jsonrpc":"2.0","method":"emit","params":["newsUpdate",1]}"#);
        assert_event(raw, "newsUpdate", "[1]");
        next_frame_is_reply_to_a_call(raw);
    });
}

#[test]
fn null_id_is_a_notification() {
    with_client(|_, raw| {
        raw.send_text(r#"{"jsonrpc":"2.0","method":"sum","params":[1,2],"id":null}"#);
        next_frame_is_reply_to_a_call(raw);
    });
}

#[test]
fn id_zero_is_a_real_id() {
    assert_real_id("0");
}

#[test]
fn empty_string_id_is_a_real_id() {
    assert_real_id(r#""""#);
}

#[test]
fn ids_are_echoed_as_they_came() {
    with_client(|_, raw| {
        for id in ["1.5", "-3", "12345678901234", r#""abc""#, r#""ü\"x""#] {
            let frame = format!(r#"{{"jsonrpc":"2.0","method":"sum","params":[1],"id":{id}}}"#);
            let reply = raw.request(&frame);
            let sent: Value = serde_json::from_str(id).unwrap();
            assert_eq!(reply, json!({"jsonrpc": "2.0", "result": 1, "id": sent}));
        }
    });
}

#[test]
fn method_returning_nothing_gives_null_result() {
    with_client(|_, raw| {
        assert_reply(
            raw,
            r#"{"jsonrpc":"2.0","method":"update","params":[1,2,3],"id":1}"#,
            r#"{"jsonrpc":"2.0","result":null,"id":1}"#,
        );
        assert_reply(
            raw,
            r#"{"jsonrpc":"2.0","method":"update","id":2}"#,
            r#"{"jsonrpc":"2.0","result":null,"id":2}"#,
        );
    });
}

// ---------------------------------------------------------------- events

#[test]
fn event_frame_has_notification_and_params_only() {
    with_client(|server, raw| {
        subscribe(raw, &["newsUpdate"]);
        server.emit("newsUpdate", json!({"price": 42})).unwrap();
        assert_eq!(
            raw.recv_text(),
            r#"{"notification":"newsUpdate","params":{"price":42}}"#
        );
    });
}

#[test]
fn emitted_params_wrap_scalars_and_keep_arrays_and_objects() {
    with_client(|server, raw| {
        subscribe(raw, &["newsUpdate"]);
        server.emit("newsUpdate", 5).unwrap();
        server.emit("newsUpdate", "text").unwrap();
        server.emit("newsUpdate", true).unwrap();
        server.emit("newsUpdate", ()).unwrap();
        server.emit("newsUpdate", Value::Null).unwrap();
        server.emit("newsUpdate", json!([1, "two", null])).unwrap();
        server.emit("newsUpdate", json!([])).unwrap();
        server
            .emit("newsUpdate", json!({"a": [1], "b": null}))
            .unwrap();
        server.emit("newsUpdate", json!({})).unwrap();
        for params in [
            "[5]",
            r#"["text"]"#,
            "[true]",
            "[]",
            "[]",
            r#"[1,"two",null]"#,
            "[]",
            r#"{"a":[1],"b":null}"#,
            "{}",
        ] {
            assert_event(raw, "newsUpdate", params);
        }
    });
}

#[test]
fn emit_method_of_fixture_wraps_params_as_emit_does() {
    with_client(|server, listener| {
        subscribe(listener, &["newsUpdate"]);
        let mut caller = connect(server, "/");
        for params in [
            json!(["newsUpdate", 5]),
            json!(["newsUpdate"]),
            json!(["newsUpdate", [5, 6]]),
            json!(["newsUpdate", {"price": 1}]),
        ] {
            assert_eq!(caller.call("emit", params)["result"], true);
        }
        for params in ["[5]", "[]", "[5,6]", r#"{"price":1}"#] {
            assert_event(listener, "newsUpdate", params);
        }
    });
}

#[test]
fn events_go_only_to_subscribers() {
    with_client(|server, subscriber| {
        subscribe(subscriber, &["newsUpdate"]);
        let mut other = connect(server, "/");
        subscribe(&mut other, &["newMessage"]);
        server.emit("newsUpdate", json!(["news"])).unwrap();
        server.emit("newMessage", json!(["marker"])).unwrap();
        assert_event(subscriber, "newsUpdate", r#"["news"]"#);
        // `other` is sent the marker, emitted after the news; had it been sent the news,
        // that would have come first.
        assert_event(&mut other, "newMessage", r#"["marker"]"#);
        next_frame_is_reply_to_a_call(subscriber);
    });
}

#[test]
fn events_stay_in_their_namespace() {
    with_client(|server, root| {
        subscribe(root, &["newMessage", "newsUpdate"]);
        let mut chat = connect(server, "/chat");
        subscribe(&mut chat, &["newMessage", "chatMessage"]);
        server
            .namespace("/chat")
            .emit("newMessage", json!({"from": "chat"}))
            .unwrap();
        server.emit("newMessage", json!({"from": "root"})).unwrap();
        server
            .namespace("/chat")
            .emit("chatMessage", json!(["marker"]))
            .unwrap();
        server.emit("newsUpdate", json!(["marker"])).unwrap();
        assert_event(root, "newMessage", r#"{"from":"root"}"#);
        assert_event(root, "newsUpdate", r#"["marker"]"#);
        assert_event(&mut chat, "newMessage", r#"{"from":"chat"}"#);
        assert_event(&mut chat, "chatMessage", r#"["marker"]"#);
        // The fixture's emit method, asked for /chat, reaches the chat subscriber too.
        assert_eq!(
            root.call("emit", json!(["chatMessage", [7], "/chat"]))["result"],
            true
        );
        assert_event(&mut chat, "chatMessage", "[7]");
    });
}

// ---------------------------------------------------------------- batches

#[test]
fn batch_replies_in_order_and_skips_notifications() {
    with_client(|_, raw| {
        let batch = r#"[
        {"jsonrpc":"2.0","method":"sum","params":[1,2],"id":1},
        {"jsonrpc":"2.0","method":"sum","params":[3]},
        {"jsonrpc":"2.0","method":"nope","id":"b"},
        {"jsonrpc":"2.0","method":"fail","id":3},
        {"jsonrpc":"2.0","method":"fail"},
        {"jsonrpc":"2.0","method":"update","id":4},
        {"jsonrpc":"2.0","method":"subtract","params":{"minuend":10,"subtrahend":4},"id":0}
    ]"#;
        assert_reply(
            raw,
            batch,
            concat!(
                r#"[{"jsonrpc":"2.0","result":3,"id":1},"#,
                r#"{"jsonrpc":"2.0","error":{"code":-32601,"message":"Method not found"},"id":"b"},"#,
                r#"{"jsonrpc":"2.0","error":{"code":-32050,"message":"Server error","data":"Server error details"},"id":3},"#,
                r#"{"jsonrpc":"2.0","result":null,"id":4},"#,
                r#"{"jsonrpc":"2.0","result":6,"id":0}]"#
            ),
        );
    });
}

#[test]
fn batch_of_notifications_sends_nothing_and_runs_in_order() {
    with_client(|_, raw| {
        subscribe(raw, &["newsUpdate"]);
        raw.send_text(
            r#"[{"jsonrpc":"2.0","method":"emit","params":["newsUpdate",1]},
            {"jsonrpc":"2.0","method":"fail"},
            {"jsonrpc":"2.0","method":"emit","params":["newsUpdate",2]},
            {"jsonrpc":"2.0","method":"emit","params":["newsUpdate",3]}]"#,
        );
        for n in 1..=3 {
            assert_event(raw, "newsUpdate", &format!("[{n}]"));
        }
        next_frame_is_reply_to_a_call(raw);
    });
}

#[test]
fn batch_answers_refused_notifications_with_null_id() {
    assert_answers(
        [r#"[{"jsonrpc":"2.0","method":"nope"},{"jsonrpc":"2.0","method":"sum","params":[1]}]"#],
        r#"[{"jsonrpc":"2.0","error":{"code":-32601,"message":"Method not found"},"id":null}]"#,
    );
}

// ---------------------------------------------------------------- framing

#[test]
fn binary_frame_holding_json_is_answered_in_text() {
    with_client(|_, raw| {
        raw.send_binary(br#"{"jsonrpc":"2.0","method":"sum","params":[5,3],"id":1}"#);
        assert_text_frame(raw, r#"{"jsonrpc":"2.0","result":8,"id":1}"#);
        raw.send_binary(br#"  [{"jsonrpc":"2.0","method":"sum","params":[1],"id":2}]"#);
        assert_text_frame(raw, r#"[{"jsonrpc":"2.0","result":1,"id":2}]"#);
    });
}

// ---------------------------------------------------------------- __listMethods

#[test]
fn list_methods_names_every_method_in_registration_order() {
    with_client(|server, raw| {
        assert_reply(
            raw,
            r#"{"jsonrpc":"2.0","method":"__listMethods","id":1}"#,
            concat!(
                r#"{"jsonrpc":"2.0","result":["__listMethods","sum","greet","subtract","echo","#,
                r#""update","sleep","whoami","fail","panic","cryptic","emit","rpc.login"],"id":1}"#
            ),
        );
        // A method registered later comes last; events are not listed.
        server.register("late", |_: Value, _| Ok(1));
        assert_eq!(
            raw.call("__listMethods", json!([]))["result"],
            json!([
                "__listMethods",
                "sum",
                "greet",
                "subtract",
                "echo",
                "update",
                "sleep",
                "whoami",
                "fail",
                "panic",
                "cryptic",
                "emit",
                "rpc.login",
                "late"
            ])
        );
        let mut chat = connect(server, "/chat");
        assert_eq!(
            chat.call("__listMethods", json!([]))["result"],
            json!(["__listMethods", "sum"])
        );
    });
}
