//! Security properties of the server, over real loopback sockets: protected methods and
//! events are protected from the moment they exist, and socket ids are unique within a
//! namespace.

mod common;

use std::net::Shutdown;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use common::{DEADLINE, Raw, url, wait_until};
use serde_json::{Value, json};
use tungstenite::client::IntoClientRequest;
use wsrpc::{RpcError, Server, ServerConfig};

/// Times a name is registered (or declared) again while clients hammer it.
const REGISTRATIONS: usize = 200;
/// Clients hammering at once.
const HAMMERS: usize = 3;
/// Requests each client sends before it reads their replies.
const PIPELINED: usize = 16;

/// A server with a login and nothing else; `close()` does not wait for the test's
/// clients, which do not answer close frames.
fn bare_server(mut config: ServerConfig) -> Server {
    config.close_timeout = Duration::from_millis(100);
    let server = Server::builder()
        .config(config)
        .bind("127.0.0.1:0")
        .expect("bind on loopback");
    server.set_auth(|p: Value, _| Ok(p == json!({"password": "open sesame"})));
    server
}

/// `HAMMERS` clients, each sending `frame` `PIPELINED` times, then reading the replies,
/// over and over until stopped: each frame is a request the server looks its tables up
/// for, so the tables are looked at every few microseconds.
struct Hammering {
    stop: Arc<AtomicBool>,
    /// Rounds of replies read so far, all clients together.
    rounds: Arc<AtomicUsize>,
    threads: Vec<thread::JoinHandle<Vec<Value>>>,
}

impl Hammering {
    fn start(server: &Server, frame: Value) -> Hammering {
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicUsize::new(0));
        let threads = (0..HAMMERS)
            .map(|_| {
                let mut raw = Raw::connect(&url(server, "/"));
                let (stop, rounds) = (stop.clone(), rounds.clone());
                let frame = frame.to_string();
                thread::spawn(move || {
                    let mut replies = Vec::new();
                    while !stop.load(Ordering::SeqCst) {
                        for _ in 0..PIPELINED {
                            raw.send_text(&frame);
                        }
                        replies.extend((0..PIPELINED).map(|_| raw.recv()));
                        rounds.fetch_add(1, Ordering::SeqCst);
                    }
                    replies
                })
            })
            .collect();
        Hammering {
            stop,
            rounds,
            threads,
        }
    }

    /// Run `setup` while the clients hammer; then every reply they got, and how many
    /// rounds were answered meanwhile. `setup` gets a step function that waits for the
    /// next round, to spread its work over many of them.
    fn during(self, setup: impl FnOnce(&dyn Fn())) -> (Vec<Value>, usize) {
        let rounds = || self.rounds.load(Ordering::SeqCst);
        assert!(
            wait_until(|| rounds() >= HAMMERS),
            "the clients did not start"
        );
        let before = rounds();
        let step = || {
            let seen = rounds();
            assert!(wait_until(|| rounds() > seen), "the clients stopped");
        };
        setup(&step);
        let during = rounds() - before;
        self.stop.store(true, Ordering::SeqCst);
        let replies = self
            .threads
            .into_iter()
            .flat_map(|t| t.join().expect("a hammering client"))
            .collect();
        (replies, during)
    }
}

#[test]
fn a_method_registered_protected_is_never_callable_without_login() {
    let server = bare_server(ServerConfig::default());
    let call = json!({"jsonrpc": "2.0", "method": "vault", "params": [], "id": 1});
    let hammering = Hammering::start(&server, call);
    // Registered for the first time, then again and again: never public in between.
    let (replies, during) = hammering.during(|step| {
        for _ in 0..REGISTRATIONS {
            server.register_protected("vault", |_: Value, _| Ok::<_, RpcError>("the gold"));
            step();
        }
    });
    let leaked: Vec<&Value> = replies
        .iter()
        .filter(|r| r.get("result").is_some())
        .collect();
    assert!(
        leaked.is_empty(),
        "called without login: {:?}",
        leaked.first()
    );
    let code = |r: &Value| r["error"]["code"].as_i64();
    let forbidden = replies.iter().filter(|r| code(r) == Some(-32605)).count();
    let unknown = replies.iter().filter(|r| code(r) == Some(-32601)).count();
    assert_eq!(forbidden + unknown, replies.len(), "other replies came");
    println!(
        "{during} rounds while registering: {forbidden} calls forbidden, {unknown} before it existed"
    );
    assert!(forbidden > 0, "no call reached the registered method");

    // Logged in, the same call goes through.
    let mut raw = Raw::connect(&url(&server, "/"));
    assert_eq!(
        raw.call("rpc.login", json!({"password": "open sesame"}))["result"],
        json!(true)
    );
    assert_eq!(raw.call("vault", json!([]))["result"], json!("the gold"));
    server.close();
}

#[test]
fn an_event_declared_protected_is_never_subscribed_without_login() {
    let server = bare_server(ServerConfig::default());
    let subscribe = json!({"jsonrpc": "2.0", "method": "rpc.on", "params": ["feed"], "id": 1});
    let hammering = Hammering::start(&server, subscribe);
    let (replies, during) = hammering.during(|step| {
        for _ in 0..REGISTRATIONS {
            server.event_protected("feed");
            step();
        }
    });
    // Before the event exists the answer is "provided event invalid"; once it exists,
    // -32606. Anything else ("ok", "already subscribed") means a subscription.
    let invalid = json!({"feed": "provided event invalid"});
    let subscribed: Vec<&Value> = replies
        .iter()
        .filter(|r| r.get("result").is_some_and(|v| *v != invalid))
        .collect();
    assert!(
        subscribed.is_empty(),
        "subscribed without login: {:?}",
        subscribed.first()
    );
    let forbidden = replies
        .iter()
        .filter(|r| r["error"]["code"] == json!(-32606))
        .count();
    println!("{during} rounds while declaring: {forbidden} subscriptions forbidden");
    assert!(forbidden > 0, "no subscription reached the declared event");
    server.close();
}

#[test]
fn registering_a_protected_name_again_keeps_it_protected_until_made_public() {
    let server = bare_server(ServerConfig::default());
    server.register_protected("vault", |_: Value, _| Ok::<_, RpcError>("old gold"));
    let mut raw = Raw::connect(&url(&server, "/"));
    let forbidden = json!({"code": -32605, "message": "Method forbidden"});
    assert_eq!(raw.call("vault", json!([]))["error"], forbidden);

    let handle = server.register("vault", |_: Value, _| Ok::<_, RpcError>("new gold"));
    assert_eq!(raw.call("vault", json!([]))["error"], forbidden);

    handle.public();
    assert_eq!(raw.call("vault", json!([]))["result"], json!("new gold"));
    // And the other way: registering a public name protected protects it at once.
    server.register_protected("vault", |_: Value, _| Ok::<_, RpcError>("newer gold"));
    assert_eq!(raw.call("vault", json!([]))["error"], forbidden);

    // Events too: declared again, a protected event stays protected.
    server.event_protected("audit");
    server.event("audit");
    let reply = raw.call("rpc.on", json!(["audit"]));
    assert_eq!(reply["error"]["code"], json!(-32606), "{reply}");
    server.close();
}

// ---------------------------------------------------------------- unique socket ids

/// What a connection with `query` to `path` got: the connection, or the HTTP status
/// and body of the refusal.
fn try_connect(server: &Server, path: &str) -> Result<Raw, (u16, String)> {
    try_connect_with(server, path, None)
}

fn try_connect_with(
    server: &Server,
    path: &str,
    resume: Option<&str>,
) -> Result<Raw, (u16, String)> {
    let mut request = url(server, path).into_client_request().unwrap();
    if let Some(token) = resume {
        request
            .headers_mut()
            .insert("x-wsrpc-resume", token.parse().unwrap());
    }
    match tungstenite::connect(request) {
        Ok((ws, _)) => {
            let raw = Raw { ws };
            raw.tcp().set_read_timeout(Some(DEADLINE)).unwrap();
            Ok(raw)
        }
        Err(tungstenite::Error::Http(response)) => {
            let body = response.body().clone().unwrap_or_default();
            Err((
                response.status().as_u16(),
                String::from_utf8_lossy(&body).into_owned(),
            ))
        }
        Err(e) => panic!("handshake failed without an HTTP answer: {e}"),
    }
}

/// A server whose `whoami` (in `/` and `/other`) answers the caller's socket id.
fn id_server(config: ServerConfig) -> Server {
    let server = bare_server(config);
    for ns in ["/", "/other"] {
        server.namespace(ns).register("whoami", |_: Value, ctx| {
            Ok::<_, RpcError>(ctx.socket_id().to_owned())
        });
    }
    server
}

fn whoami(raw: &mut Raw) -> Value {
    raw.call("whoami", json!([]))["result"].clone()
}

#[test]
fn a_second_connection_asking_for_a_taken_socket_id_is_refused_with_409() {
    let server = id_server(ServerConfig::default());
    let mut first = try_connect(&server, "/?socket_id=alice").expect("the first connection");
    assert_eq!(whoami(&mut first), json!("alice"));

    let second = try_connect(&server, "/?socket_id=alice");
    assert_eq!(second.err(), Some((409, "socket id in use".to_owned())));
    let stats = server.stats();
    assert_eq!(stats.refused_socket_id, 1);
    assert_eq!(
        stats.handshakes_failed, 0,
        "a refusal is not a failed handshake"
    );

    // The first is untouched.
    assert_eq!(whoami(&mut first), json!("alice"));
    assert_eq!(server.clients(), ["alice"]);
    server.close();
}

#[test]
fn a_socket_id_can_be_taken_again_after_its_connection_ends() {
    let server = id_server(ServerConfig::default());
    let mut first = try_connect(&server, "/?socket_id=bob").expect("the first connection");
    assert_eq!(whoami(&mut first), json!("bob"));
    first.ws.close(None).unwrap();
    read_to_end(&mut first);

    // The server frees the id once it has seen the connection end.
    let mut again = None;
    let taken = wait_until(|| {
        again = try_connect(&server, "/?socket_id=bob").ok();
        again.is_some()
    });
    assert!(taken, "the id stayed taken after its connection ended");
    assert_eq!(whoami(again.as_mut().unwrap()), json!("bob"));
    assert_eq!(server.clients(), ["bob"]);
    server.close();
}

#[test]
fn the_same_socket_id_in_two_namespaces_is_fine() {
    let server = id_server(ServerConfig::default());
    let mut root = try_connect(&server, "/?socket_id=carol").expect("in /");
    let mut other = try_connect(&server, "/other?socket_id=carol").expect("in /other");
    assert_eq!(whoami(&mut root), json!("carol"));
    assert_eq!(whoami(&mut other), json!("carol"));
    assert_eq!(server.stats().refused_socket_id, 0);
    server.close();
}

#[test]
fn generated_socket_ids_are_random_uuids_held_like_asked_ones() {
    let server = id_server(ServerConfig::default());
    let mut a = try_connect(&server, "/").unwrap();
    let mut b = try_connect(&server, "/").unwrap();
    let (a_id, b_id) = (whoami(&mut a), whoami(&mut b));
    assert_ne!(a_id, b_id);
    let a_id = a_id.as_str().unwrap().to_owned();
    assert_eq!(a_id.len(), 36);
    assert_eq!(&a_id[14..15], "4", "a version 4 UUID: {a_id}");
    // Nobody can ask for a generated id while its connection is open.
    let taken = try_connect(&server, &format!("/?socket_id={a_id}"));
    assert_eq!(taken.err().map(|e| e.0), Some(409));
    server.close();
}

/// Vanish without a close frame: the server parks the session.
fn vanish(raw: Raw) {
    raw.tcp().shutdown(Shutdown::Both).unwrap();
}

fn resuming_config() -> ServerConfig {
    let mut config = ServerConfig::default();
    config.session_ttl = Some(Duration::from_secs(60));
    config
}

#[test]
fn a_resumed_session_keeps_its_socket_id_and_holds_it() {
    let server = id_server(resuming_config());
    let (mut first, token, _) = Raw::session(&server, "/?socket_id=dave", None);
    assert_eq!(token.len(), 32, "a 128-bit token in hex: {token}");
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(whoami(&mut first), json!("dave"));
    vanish(first);
    assert!(wait_until(|| server.clients().is_empty()), "not parked");

    // Resuming its own session, a connection gets its id back, whatever it asks for.
    let (mut back, again, resumed) = Raw::session(&server, "/?socket_id=dave", Some(&token));
    assert!(resumed);
    assert_eq!(again, token);
    assert_eq!(whoami(&mut back), json!("dave"));
    // And holds it like any connection.
    let taken = try_connect_with(&server, "/?socket_id=dave", None);
    assert_eq!(taken.err(), Some((409, "socket id in use".to_owned())));
    server.close();
}

#[test]
fn a_new_connection_asking_for_a_parked_id_takes_it_and_the_session_is_given_up() {
    let server = id_server(resuming_config());
    let (first, token, _) = Raw::session(&server, "/?socket_id=erin", None);
    vanish(first);
    assert!(wait_until(|| server.clients().is_empty()), "not parked");

    let (mut newcomer, other, resumed) = Raw::session(&server, "/?socket_id=erin", None);
    assert!(!resumed);
    assert_ne!(other, token);
    assert_eq!(whoami(&mut newcomer), json!("erin"));
    // The parked session cannot come back: its id is someone else's now.
    let (mut late, _, resumed) = Raw::session(&server, "/", Some(&token));
    assert!(
        !resumed,
        "a session was resumed under an id another connection holds"
    );
    assert_ne!(whoami(&mut late), json!("erin"));
    server.close();
}

/// Read until the connection ends (the server's answer to a close frame included).
fn read_to_end(raw: &mut Raw) {
    while raw.ws.read().is_ok() {}
}
