//! Interop: the wsrpc `Client` against the real rpc-websockets 10.0.1 `Server`
//! (`interop/js_server.mjs`, run with node).
//!
//! Needs `node` on the PATH and `interop/node_modules` (`cd interop && npm ci`), so every
//! test is ignored by default: `cargo test --test interop_js_server -- --include-ignored`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use wsrpc::{Client, Error, RpcError};

/// How long any single wait may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(10);

/// `node interop/js_server.mjs`, killed when dropped (also when an assertion fails).
struct NodeServer {
    child: Child,
    port: u16,
    /// The server's stdout lines after the first.
    lines: mpsc::Receiver<String>,
}

impl NodeServer {
    fn start() -> NodeServer {
        let interop = Path::new(env!("CARGO_MANIFEST_DIR")).join("interop");
        let package: PathBuf = interop.join("node_modules/rpc-websockets/package.json");
        assert!(
            package.is_file(),
            "{} is missing: run `cd interop && npm ci` first (node and npm are needed)",
            package.display()
        );
        let child = Command::new("node")
            .arg(interop.join("js_server.mjs"))
            .current_dir(&interop)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run `node` (is Node.js installed?): {e}"));
        let mut server = NodeServer {
            child,
            port: 0,
            lines: mpsc::channel().1,
        };
        let stdout = server.child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let first = rx
            .recv_timeout(DEADLINE)
            .expect("js_server.mjs printed no first line (did it crash? see stderr)");
        let port = first
            .strip_prefix("listening on 127.0.0.1:")
            .and_then(|p| p.parse::<u16>().ok())
            .unwrap_or_else(|| panic!("unexpected first line from js_server.mjs: {first:?}"));
        assert_ne!(port, 0);
        server.port = port;
        server.lines = rx;
        server
    }

    fn url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{}", self.port, path)
    }

    /// A client on `path` that does not reconnect, with calls bounded by `DEADLINE`.
    fn client(&self, path: &str) -> Client {
        Client::builder(&self.url(path))
            .reconnect(false)
            .timeout(DEADLINE)
            .connect()
            .expect("connect to js_server.mjs")
    }

    /// Wait for the server to print `line`.
    fn expect_line(&self, line: &str) {
        let end = Instant::now() + DEADLINE;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l == line => return,
                Ok(_) => continue,
                Err(e) => panic!("js_server.mjs did not print {line:?}: {e}"),
            }
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `Error::Rpc` inside `result`, or a panic naming what came instead.
#[track_caller]
fn rpc_error<T: std::fmt::Debug>(result: Result<T, Error>) -> RpcError {
    match result {
        Err(Error::Rpc(e)) => e,
        other => panic!("expected Error::Rpc, got {other:?}"),
    }
}

#[test]
#[ignore = "needs node and interop/node_modules; make test runs it"]
fn calls_return_results() {
    let server = NodeServer::start();
    let client = server.client("/");
    assert_eq!(client.call("sum", [5, 3]).unwrap(), json!(8));
    assert_eq!(client.call("sum", [1.5, 2.25]).unwrap(), json!(3.75));
    assert_eq!(
        client.call("greet", json!({"name": "wsrpc"})).unwrap(),
        json!("Hello, wsrpc!")
    );
    let sum: i64 = client.call_as("sum", [40, 2]).unwrap();
    assert_eq!(sum, 42);
    let greeting: String = client.call_as("greet", json!({"name": "typed"})).unwrap();
    assert_eq!(greeting, "Hello, typed!");
    // A result that does not fit the asked type is a codec error, not a panic.
    assert!(matches!(
        client.call_as::<String>("sum", [1, 2]),
        Err(Error::Codec(_))
    ));
}

#[test]
#[ignore = "needs node and interop/node_modules; make test runs it"]
fn call_errors_keep_code_message_and_data() {
    let server = NodeServer::start();
    let client = server.client("/");
    assert_eq!(
        rpc_error(client.call("fail", ())),
        RpcError::new(-32050, "Server error").with_data("Server error details")
    );
    assert_eq!(
        rpc_error(client.call("noSuchMethod", [1])),
        RpcError::new(-32601, "Method not found")
    );
    let typed = client.call_as::<i64>("fail", ());
    assert_eq!(rpc_error(typed).code, -32050);
    // The connection is still good.
    assert_eq!(client.call("sum", [1, 1]).unwrap(), json!(2));
}

#[test]
#[ignore = "needs node and interop/node_modules; make test runs it"]
fn notify_and_subscribe() {
    let server = NodeServer::start();
    let client = server.client("/");
    let (tx, rx) = mpsc::channel();
    client
        .subscribe("newsUpdate", move |params| {
            let _ = tx.send(params.clone());
        })
        .unwrap();

    client
        .notify("emit", json!(["newsUpdate", {"via": "notify"}]))
        .unwrap();
    assert_eq!(rx.recv_timeout(DEADLINE).unwrap(), json!({"via": "notify"}));

    assert_eq!(
        client
            .call("emit", json!(["newsUpdate", [1, "two", {"three": 3}]]))
            .unwrap(),
        json!(true)
    );
    assert_eq!(
        rx.recv_timeout(DEADLINE).unwrap(),
        json!([1, "two", {"three": 3}])
    );

    client.call("emit", json!(["newsUpdate", 5])).unwrap();
    assert_eq!(rx.recv_timeout(DEADLINE).unwrap(), json!([5]));

    // An event the server does not have is refused.
    match client.subscribe("noSuchEvent", |_| {}) {
        Err(Error::Subscribe { event, reason }) => {
            assert_eq!(event, "noSuchEvent");
            assert_eq!(reason, "provided event invalid");
        }
        other => panic!("expected Error::Subscribe, got {other:?}"),
    }
}

#[test]
#[ignore = "needs node and interop/node_modules; make test runs it"]
fn login_opens_protected_methods_and_events() {
    let server = NodeServer::start();
    let client = server.client("/");

    assert_eq!(
        rpc_error(client.call("cryptic", ())),
        RpcError::new(-32605, "Method forbidden")
    );
    assert_eq!(
        rpc_error(client.subscribe("secretFeed", |_| {})),
        RpcError::new(-32606, "Event forbidden")
    );
    assert!(matches!(
        client.login(json!({"username": "foo", "password": "wrong"})),
        Err(Error::AuthFailed)
    ));
    assert_eq!(rpc_error(client.call("cryptic", ())).code, -32605);

    assert_eq!(
        client
            .login(json!({"username": "foo", "password": "bar"}))
            .unwrap(),
        json!(true)
    );
    assert_eq!(client.call("cryptic", ()).unwrap(), json!("boohoo"));
    let (tx, rx) = mpsc::channel();
    client
        .subscribe("secretFeed", move |p| {
            let _ = tx.send(p.clone());
        })
        .unwrap();
    client
        .call("emit", json!(["secretFeed", {"code": 7}]))
        .unwrap();
    assert_eq!(rx.recv_timeout(DEADLINE).unwrap(), json!({"code": 7}));

    // Login belongs to the connection.
    let other = server.client("/");
    assert_eq!(rpc_error(other.call("cryptic", ())).code, -32605);
}

#[test]
#[ignore = "needs node and interop/node_modules; make test runs it"]
fn list_methods_and_namespaces() {
    let server = NodeServer::start();
    let root = server.client("/");
    let mut methods = root.list_methods().unwrap();
    methods.sort();
    assert_eq!(
        methods,
        [
            "__listMethods",
            "cryptic",
            "emit",
            "fail",
            "greet",
            "rpc.login",
            "sleep",
            "sum"
        ]
    );

    let chat = server.client("/chat");
    assert_eq!(chat.call("sum", [20, 22]).unwrap(), json!(42));
    let mut chat_methods = chat.list_methods().unwrap();
    chat_methods.sort();
    assert_eq!(chat_methods, ["__listMethods", "sum"]);
    assert_eq!(
        rpc_error(chat.call("greet", json!({"name": "x"}))).code,
        -32601
    );
}

#[test]
#[ignore = "needs node and interop/node_modules; make test runs it"]
fn pending_calls_fail_at_once_when_the_server_dies() {
    let mut server = NodeServer::start();
    let client = server.client("/");
    assert_eq!(client.call("sum", [1, 1]).unwrap(), json!(2));

    let (tx, rx) = mpsc::channel();
    let caller = client.clone();
    thread::spawn(move || {
        let _ = tx.send(caller.call("sleep", [20_000]));
    });
    // The server prints this when the call has reached its handler.
    server.expect_line("sleep started 20000");
    let killed = Instant::now();
    server.kill();

    let outcome = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the pending call did not fail after the server died");
    assert!(
        matches!(outcome, Err(Error::ConnectionLost)),
        "expected Error::ConnectionLost, got {outcome:?}"
    );
    assert!(
        killed.elapsed() < Duration::from_secs(2),
        "the call failed only after {:?}",
        killed.elapsed()
    );
    assert!(!client.is_connected());
}
