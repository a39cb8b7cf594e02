//! What reply each request gets: the contract's dispatch rules, free of sockets.
//!
//! A connection thread hands a frame to [`handle_frame`] with its [`Session`] and its
//! namespace's table; the encoded reply (if any) comes back. Subscriptions are recorded
//! in the session and reported to the dispatcher, which does the fan-out.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Map, Value};

use super::admission::Counters;
use super::dispatcher::Command;
use super::registry::NamespaceTable;
use super::{Context, Server};
use crate::error::{RpcError, codes};
use crate::log_limit::error_limited;
use crate::protocol::{Call, Codec, Encoded, EventNames, Incoming, Item, Params, Reply};

/// One connection as the rules see it. Who it is subscribed to is not here: the
/// dispatcher owns subscriptions, and `rpc.on` / `rpc.off` ask it.
pub(crate) struct Session {
    /// The dispatcher's key for the connection (socket ids need not be unique).
    pub key: u64,
    pub socket_id: String,
    pub namespace: String,
    /// The token that resumes this session after a drop (with `session_ttl`).
    pub token: Option<String>,
    /// Set by a successful `rpc.login`; read by handlers and by the dispatcher when it
    /// parks the session. An atomic: nobody ever waits for it.
    logged_in: AtomicBool,
}

impl Session {
    pub(crate) fn new(key: u64, socket_id: String, namespace: String) -> Self {
        Session {
            key,
            socket_id,
            namespace,
            token: None,
            logged_in: AtomicBool::new(false),
        }
    }

    /// Take over a resumed session's login (its subscriptions are the dispatcher's).
    pub(crate) fn restore(&self, logged_in: bool) {
        self.logged_in.store(logged_in, Ordering::SeqCst);
    }

    pub(crate) fn logged_in(&self) -> bool {
        self.logged_in.load(Ordering::SeqCst)
    }
}

/// Why a call produced no result.
enum Failure {
    /// Refused before any handler ran: answered even for notifications (id `null`).
    Refused(RpcError),
    /// The handler failed: answered only when the call has an id.
    Failed(RpcError),
}

/// Run every call in `frame` and encode what goes back; `None` when nothing does.
pub(crate) fn handle_frame(
    server: &Server,
    session: &Session,
    table: &NamespaceTable,
    codec: Codec,
    frame: &[u8],
) -> Option<Vec<u8>> {
    let run = |item: Item<'_>| match item {
        Ok(call) => handle_call(server, session, table, codec, call),
        Err(reply) => Some(reply),
    };
    match codec.decode_requests(frame, server.config().max_batch_size) {
        Incoming::Refused(reply) => Some(codec.encode_replies(&[reply], false)),
        Incoming::Single(item) => run(item).map(|reply| codec.encode_replies(&[reply], false)),
        Incoming::Batch(items) => {
            let replies: Vec<Reply> = items.into_iter().filter_map(run).collect();
            (!replies.is_empty()).then(|| codec.encode_replies(&replies, true))
        }
    }
}

fn handle_call(
    server: &Server,
    session: &Session,
    table: &NamespaceTable,
    codec: Codec,
    call: Call<'_>,
) -> Option<Reply> {
    let outcome = match call.method.as_ref() {
        "rpc.on" => change_subscriptions(server, session, table, call.params, codec, true),
        "rpc.off" => change_subscriptions(server, session, table, call.params, codec, false),
        "rpc.login" => login(server, session, table, call.params, codec),
        "__listMethods" => encode(codec, &table.method_names()),
        name => run_method(server, session, table, name, call.params, codec),
    };
    if let Err(Failure::Refused(error) | Failure::Failed(error)) = &outcome
        && crate::protocol::past_a_decoding_bound(error)
    {
        Counters::count(&server.counters().params_past_bounds);
    }
    match outcome {
        Ok(result) => call.id.map(|id| Reply {
            id: Some(id),
            outcome: Ok(result),
        }),
        Err(Failure::Refused(error)) => Some(Reply::error(call.id, error)),
        Err(Failure::Failed(error)) => {
            if call.id.is_none() {
                log::debug!("notification '{}' failed: {error}", call.method);
            }
            call.id.map(|id| Reply::error(Some(id), error))
        }
    }
}

fn refused(code: i64) -> Failure {
    Failure::Refused(RpcError::standard(code))
}

fn encode<T: serde::Serialize>(codec: Codec, value: &T) -> Result<Encoded, Failure> {
    codec
        .encode_value(value)
        .map_err(|msg| Failure::Failed(RpcError::standard(codes::INTERNAL_ERROR).with_data(msg)))
}

fn context<'a>(server: &'a Server, session: &'a Session) -> Context<'a> {
    Context {
        server,
        socket_id: &session.socket_id,
        namespace: &session.namespace,
        logged_in: session.logged_in(),
    }
}

/// Event names from `rpc.on` / `rpc.off` params: an array of at most
/// [`MAX_EVENT_NAMES`](crate::protocol::MAX_EVENT_NAMES) strings.
fn event_names(params: Params<'_>) -> Result<Vec<String>, Failure> {
    if params.is_absent() {
        return Err(refused(codes::EVENT_NOT_PROVIDED));
    }
    params.parse_seed(EventNames).map_err(Failure::Refused)
}

/// `rpc.on` (`subscribe`) or `rpc.off`: a verdict per event name. The dispatcher owns
/// subscriptions: the known names go to it and it answers which of them changed. No
/// lock is held meanwhile (the send may wait for room in its channel).
fn change_subscriptions(
    server: &Server,
    session: &Session,
    table: &NamespaceTable,
    params: Params<'_>,
    codec: Codec,
    subscribe: bool,
) -> Result<Encoded, Failure> {
    let names = event_names(params)?;
    // All or nothing: a forbidden event refuses the whole request.
    if subscribe && !session.logged_in() && names.iter().any(|n| table.event(n) == Some(true)) {
        return Err(refused(codes::EVENT_FORBIDDEN));
    }
    let known: Vec<String> = names
        .iter()
        .filter(|n| table.event(n).is_some())
        .cloned()
        .collect();
    let mut changed = if known.is_empty() {
        Vec::new()
    } else {
        let asked = server.ask(|reply| Command::Subscriptions {
            key: session.key,
            events: known,
            subscribe,
            reply,
        });
        asked.ok_or_else(|| {
            Failure::Failed(
                RpcError::standard(codes::INTERNAL_ERROR).with_data("the server is shutting down"),
            )
        })?
    }
    .into_iter();
    // The names in the order they came: a repeated name's last verdict stands.
    let mut results = Map::new();
    for name in names {
        let verdict = if table.event(&name).is_none() {
            "provided event invalid"
        } else if changed.next() == Some(true) {
            "ok"
        } else if subscribe {
            "socket has already been subscribed to event"
        } else {
            "not subscribed"
        };
        results.insert(name, Value::from(verdict));
    }
    encode(codec, &results)
}

fn login(
    server: &Server,
    session: &Session,
    table: &NamespaceTable,
    params: Params<'_>,
    codec: Codec,
) -> Result<Encoded, Failure> {
    if params.is_absent() {
        return Err(refused(codes::PARAMS_NOT_FOUND));
    }
    let auth = table
        .auth()
        .ok_or_else(|| refused(codes::METHOD_NOT_FOUND))?;
    let ctx = context(server, session);
    let accepted = guarded("rpc.login", || auth(params, &ctx))?;
    if accepted {
        session.logged_in.store(true, Ordering::SeqCst);
    }
    encode(codec, &accepted)
}

fn run_method(
    server: &Server,
    session: &Session,
    table: &NamespaceTable,
    name: &str,
    params: Params<'_>,
    codec: Codec,
) -> Result<Encoded, Failure> {
    let method = table
        .method(name)
        .ok_or_else(|| refused(codes::METHOD_NOT_FOUND))?;
    let ctx = context(server, session);
    if method.protected && !ctx.logged_in {
        return Err(refused(codes::METHOD_FORBIDDEN));
    }
    let params = if method.raw_values {
        params.allowing_raw()
    } else {
        params
    };
    guarded(name, || (method.run)(params, &ctx, codec))
}

/// Run a handler so that a panic becomes an error reply instead of a dead thread.
fn guarded<T>(name: &str, f: impl FnOnce() -> Result<T, RpcError>) -> Result<T, Failure> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result.map_err(Failure::Failed),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            error_limited!("handler of '{name}' panicked: {what}");
            let error = RpcError::standard(codes::INTERNAL_ERROR)
                .with_data(format!("handler of '{name}' panicked"));
            Err(Failure::Failed(error))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::MAX_EVENT_NAMES;
    use crate::server::registry::Registry;
    use serde_json::json;

    struct Fixture {
        server: Server,
        commands: crossbeam_channel::Receiver<Command>,
        registry: Registry,
        session: Session,
    }

    fn fixture() -> Fixture {
        let (server, commands) = Server::detached();
        let registry = Registry::default();
        registry.update("/", |t| {
            t.add_method(
                "sum",
                Arc::new(|p: Params<'_>, _: &Context<'_>, c: Codec| {
                    let nums: Vec<f64> = p.parse()?;
                    Ok(c.encode_value(&nums.iter().sum::<f64>()).unwrap())
                }),
            );
            t.add_method("boom", Arc::new(|_, _, _| panic!("kaput")));
            t.add_method(
                "fail",
                Arc::new(|_, _, _| Err(RpcError::new(-32050, "Server error").with_data("d"))),
            );
            t.add_method(
                "secret",
                Arc::new(|_, _, c| Ok(c.encode_value("boohoo").unwrap())),
            );
            t.protect_method("secret", true);
            t.add_event("news");
            t.add_event("vault");
            t.protect_event("vault", true);
            t.set_auth(Arc::new(|p: Params<'_>, _: &Context<'_>| {
                Ok(p.parse::<Value>()? == json!({"user": "foo"}))
            }));
        });
        Fixture {
            server,
            commands,
            registry,
            session: Session::new(1, "s1".into(), "/".into()),
        }
    }

    use std::sync::Arc;

    impl Fixture {
        fn send(&self, frame: &str) -> Option<Value> {
            let table = self.registry.namespace("/").unwrap();
            let out = handle_frame(
                &self.server,
                &self.session,
                &table,
                Codec::Json,
                frame.as_bytes(),
            );
            out.map(|bytes| serde_json::from_slice(&bytes).unwrap())
        }

        fn call(&self, method: &str, params: Value) -> Value {
            let frame = json!({"jsonrpc": "2.0", "method": method, "params": params, "id": 1});
            self.send(&frame.to_string()).expect("a reply")
        }
    }

    #[test]
    fn a_call_gets_its_result() {
        let f = fixture();
        assert_eq!(
            f.call("sum", json!([5, 3])),
            json!({"jsonrpc": "2.0", "result": 8.0, "id": 1})
        );
    }

    #[test]
    fn unknown_method_is_method_not_found() {
        let f = fixture();
        assert_eq!(
            f.call("nope", json!([]))["error"],
            json!({"code": -32601, "message": "Method not found"})
        );
    }

    #[test]
    fn params_the_handler_cannot_read_are_invalid_params() {
        let f = fixture();
        let error = &f.call("sum", json!({"a": 1}))["error"];
        assert_eq!(error["code"], -32602);
        assert!(error["data"].is_string());
    }

    #[test]
    fn a_structured_error_is_passed_through() {
        let f = fixture();
        assert_eq!(
            f.call("fail", json!([]))["error"],
            json!({"code": -32050, "message": "Server error", "data": "d"})
        );
    }

    #[test]
    fn a_panicking_handler_gets_an_internal_error() {
        let f = fixture();
        assert_eq!(f.call("boom", json!([]))["error"]["code"], -32603);
    }

    #[test]
    fn notifications_get_no_reply_but_refusals_do() {
        let f = fixture();
        assert_eq!(
            f.send(r#"{"jsonrpc":"2.0","method":"sum","params":[1]}"#),
            None
        );
        assert_eq!(f.send(r#"{"jsonrpc":"2.0","method":"fail"}"#), None);
        let reply = f.send(r#"{"jsonrpc":"2.0","method":"nope"}"#).unwrap();
        assert_eq!(
            (reply["error"]["code"].clone(), reply["id"].clone()),
            (json!(-32601), Value::Null)
        );
    }

    #[test]
    fn protected_method_needs_login() {
        let f = fixture();
        assert_eq!(
            f.call("secret", Value::Null)["error"],
            json!({"code": -32605, "message": "Method forbidden"})
        );
        assert_eq!(f.call("rpc.login", json!({"user": "bar"}))["result"], false);
        assert_eq!(f.call("secret", Value::Null)["error"]["code"], -32605);
        assert_eq!(f.call("rpc.login", json!({"user": "foo"}))["result"], true);
        assert_eq!(f.call("secret", Value::Null)["result"], "boohoo");
    }

    #[test]
    fn login_without_params_is_params_not_found() {
        let f = fixture();
        assert_eq!(
            f.call("rpc.login", Value::Null)["error"],
            json!({"code": -32604, "message": "Params not found"})
        );
    }

    /// The subscription changes a stand-in dispatcher was asked for.
    type Asked = Vec<(Vec<String>, bool)>;

    /// Stands in for the dispatcher: answers subscription changes from a set of its
    /// own, and records what it was asked.
    fn answer_subscriptions(f: &Fixture) -> Arc<std::sync::Mutex<Asked>> {
        let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (commands, record) = (f.commands.clone(), asked.clone());
        std::thread::spawn(move || {
            let mut subscribed = std::collections::HashSet::new();
            while let Ok(command) = commands.recv() {
                if let Command::Subscriptions {
                    key: 1,
                    events,
                    subscribe,
                    reply,
                } = command
                {
                    let changed = events
                        .iter()
                        .map(|e| match subscribe {
                            true => subscribed.insert(e.clone()),
                            false => subscribed.remove(e),
                        })
                        .collect();
                    crate::lock(&record).push((events, subscribe));
                    let _ = reply.send(changed);
                }
            }
        });
        asked
    }

    #[test]
    fn subscribe_answers_per_event_from_what_the_dispatcher_changed() {
        let f = fixture();
        let asked = answer_subscriptions(&f);
        let result = &f.call("rpc.on", json!(["news", "nope"]))["result"];
        assert_eq!(
            result,
            &json!({"news": "ok", "nope": "provided event invalid"})
        );
        assert_eq!(
            crate::lock(&asked).as_slice(),
            [(vec!["news".to_owned()], true)],
            "the dispatcher was not asked for the known event alone"
        );
        let again = &f.call("rpc.on", json!(["news"]))["result"];
        assert_eq!(
            again,
            &json!({"news": "socket has already been subscribed to event"})
        );
        let off = &f.call("rpc.off", json!(["news", "news", "nope"]))["result"];
        assert_eq!(
            off,
            &json!({"news": "not subscribed", "nope": "provided event invalid"})
        );
        let unknown_only = &f.call("rpc.on", json!(["nope"]))["result"];
        assert_eq!(unknown_only, &json!({"nope": "provided event invalid"}));
        assert_eq!(
            crate::lock(&asked).len(),
            3,
            "asked about unknown events only"
        );
    }

    #[test]
    fn a_subscription_waiting_for_a_full_dispatcher_queue_leaves_the_session_readable() {
        // The dispatcher reads a session when it parks it; if rpc.on held the session
        // while waiting for room in the dispatcher's queue, the two would wait for each
        // other for good.
        let f = Arc::new(fixture());
        while !f.commands.is_full() {
            f.server.try_dispatch(Command::Wake);
        }
        let caller = f.clone();
        let call = std::thread::spawn(move || caller.call("rpc.on", json!(["news"])));
        // The call is stuck until the queue has room. Look at the session a few times
        // over a short window, as the dispatcher would.
        for _ in 0..10 {
            let (reader, (tx, rx)) = (f.clone(), crossbeam_channel::bounded(1));
            std::thread::spawn(move || tx.send(reader.session.logged_in()));
            assert!(
                rx.recv_timeout(std::time::Duration::from_millis(200))
                    .is_ok(),
                "the session stayed locked while rpc.on waited for the dispatcher"
            );
        }
        // Make room; the dispatcher never answers (it is shutting down, say).
        let mut seen = false;
        while !seen {
            let command = f.commands.recv().unwrap();
            seen = matches!(command, Command::Subscriptions { .. });
        }
        let reply = call.join().unwrap();
        assert_eq!(reply["error"]["code"], -32603);
        assert_eq!(reply["error"]["data"], "the server is shutting down");
    }

    #[test]
    fn subscribe_without_params_is_event_not_provided() {
        let f = fixture();
        for method in ["rpc.on", "rpc.off"] {
            assert_eq!(
                f.call(method, Value::Null)["error"],
                json!({"code": -32000, "message": "Event not provided"})
            );
        }
    }

    #[test]
    fn event_names_past_the_cap_are_invalid_params_and_change_nothing() {
        let f = fixture();
        let asked = answer_subscriptions(&f);
        let mut names = vec![json!("news"); MAX_EVENT_NAMES];
        for method in ["rpc.on", "rpc.off"] {
            let reply = f.call(method, Value::from(names.clone()));
            assert_eq!(reply["result"].as_object().unwrap().len(), 1, "{reply}");
        }
        assert_eq!(crate::lock(&asked).len(), 2);
        names.push(json!("news"));
        for method in ["rpc.on", "rpc.off"] {
            let error = &f.call(method, Value::from(names.clone()))["error"];
            assert_eq!(
                (&error["code"], &error["message"]),
                (&json!(-32602), &json!("Invalid params"))
            );
            let data = error["data"].as_str().unwrap();
            assert!(data.contains("at most 1000"), "{data}");
        }
        assert_eq!(
            crate::lock(&asked).len(),
            2,
            "a refused request reached the dispatcher"
        );
        assert_eq!(
            f.call("rpc.off", json!(["news"]))["result"]["news"],
            "not subscribed"
        );
    }

    #[test]
    fn event_names_are_refused_before_all_are_read() {
        // A name past the cap is never looked at: a bad one there still reads as "too many".
        let mut names = vec![json!("n"); MAX_EVENT_NAMES + 1];
        names.push(json!(5));
        let frame = Value::from(names).to_string();
        let raw = serde_json::value::RawValue::from_string(frame).unwrap();
        let error = event_names(Params::Json(&raw)).err().unwrap();
        let Failure::Refused(error) = error else {
            panic!("not a refusal")
        };
        assert!(
            error
                .data
                .unwrap()
                .as_str()
                .unwrap()
                .contains("too many event names")
        );
    }

    #[test]
    fn object_params_to_rpc_on_are_invalid_params() {
        let f = fixture();
        assert_eq!(
            f.call("rpc.on", json!({"news": 1}))["error"]["code"],
            -32602
        );
    }

    #[test]
    fn a_forbidden_event_subscribes_nothing() {
        let f = fixture();
        let asked = answer_subscriptions(&f);
        assert_eq!(
            f.call("rpc.on", json!(["news", "vault"]))["error"],
            json!({"code": -32606, "message": "Event forbidden"})
        );
        assert_eq!(f.call("rpc.on", json!(["news"]))["result"]["news"], "ok");
        assert_eq!(
            crate::lock(&asked).len(),
            1,
            "the forbidden request asked too"
        );
    }

    #[test]
    fn list_methods_names_everything() {
        let f = fixture();
        let names = f.call("__listMethods", Value::Null)["result"].clone();
        assert_eq!(
            names,
            json!([
                "__listMethods",
                "sum",
                "boom",
                "fail",
                "secret",
                "rpc.login"
            ])
        );
    }

    #[test]
    fn batches_answer_in_order_and_skip_notifications() {
        let f = fixture();
        let reply = f
            .send(
                r#"[{"jsonrpc":"2.0","method":"sum","params":[1,2],"id":"a"},
                    {"jsonrpc":"2.0","method":"sum","params":[1]},
                    {"jsonrpc":"2.0","method":"nope","id":2}]"#,
            )
            .unwrap();
        assert_eq!(reply[0]["result"], 3.0);
        assert_eq!(reply[0]["id"], "a");
        assert_eq!(reply[1]["error"]["code"], -32601);
        assert_eq!(reply.as_array().unwrap().len(), 2);
        assert_eq!(
            f.send(r#"[{"jsonrpc":"2.0","method":"sum","params":[1]}]"#),
            None
        );
    }
}
