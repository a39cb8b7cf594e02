//! The servers measured, each started as a child process so that its CPU time and
//! memory can be read from /proc: wsrpc (the library, served by this binary), the
//! rpc-websockets fixture on Node, jsonrpsee, and a bare tungstenite server.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::thread;

use serde_json::{Number, Value, json};
use tungstenite::Message;

use crate::wire::Codec;

/// The event every fan-out subscriber listens to.
pub const EVENT: &str = "newsUpdate";

/// A server under test, and the codec its clients speak.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Peer {
    WsrpcJson,
    WsrpcMsgPack,
    RpcWebsockets,
    Jsonrpsee,
    Bare,
}

impl Peer {
    pub const ALL: [Peer; 5] = [
        Peer::WsrpcJson,
        Peer::WsrpcMsgPack,
        Peer::RpcWebsockets,
        Peer::Jsonrpsee,
        Peer::Bare,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Peer::WsrpcJson => "wsrpc (JSON)",
            Peer::WsrpcMsgPack => "wsrpc (MessagePack)",
            Peer::RpcWebsockets => "rpc-websockets (Node)",
            Peer::Jsonrpsee => "jsonrpsee (tokio)",
            Peer::Bare => "bare tungstenite",
        }
    }

    /// wsrpc itself, rather than a peer it is compared with.
    pub fn is_ours(self) -> bool {
        matches!(self, Peer::WsrpcJson | Peer::WsrpcMsgPack)
    }

    pub fn codec(self) -> Codec {
        match self {
            Peer::WsrpcMsgPack => Codec::MsgPack,
            _ => Codec::Json,
        }
    }

    /// How a client subscribes to events, if the server has them.
    pub fn events(self) -> Option<Subscribe> {
        match self {
            Peer::WsrpcJson | Peer::WsrpcMsgPack | Peer::RpcWebsockets => Some(Subscribe::RpcOn),
            Peer::Jsonrpsee => Some(Subscribe::Jsonrpsee),
            Peer::Bare => None,
        }
    }

    /// Start the server as a child process; it prints `listening on HOST:PORT` first.
    pub fn start(self) -> Result<Started, String> {
        let exe = std::env::current_exe().map_err(|e| format!("own path: {e}"))?;
        let mut cmd = match self {
            Peer::WsrpcJson | Peer::WsrpcMsgPack => serve_cmd(&exe, "wsrpc"),
            Peer::Jsonrpsee => serve_cmd(&exe, "jsonrpsee"),
            Peer::Bare => serve_cmd(&exe, "bare"),
            Peer::RpcWebsockets => {
                let mut c = Command::new("node");
                c.arg(crate::repo_root().join("interop/js_server.mjs"));
                c.arg("--parent-stdin");
                c
            }
        };
        let mut child = cmd
            .stdout(Stdio::piped())
            // The server ends when this pipe closes, that is when we do, however we end.
            .stdin(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.name()))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        // Killed (and reaped) on any early return from here on.
        let running = Running { child };
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let port = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse::<u16>().ok())
            .ok_or_else(|| format!("{} did not say where it listens: {line:?}", self.name()))?;
        Ok(Started {
            running,
            url: format!("ws://127.0.0.1:{port}"),
        })
    }
}

fn serve_cmd(exe: &std::path::Path, what: &str) -> Command {
    let mut c = Command::new(exe);
    c.args(["--serve", what, "--parent-stdin"]);
    c
}

/// How clients subscribe to the fan-out event.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Subscribe {
    /// `rpc.on` with the event's name (rpc-websockets and wsrpc).
    RpcOn,
    /// `subscribe_newsUpdate`; notifications carry `params.result`.
    Jsonrpsee,
}

/// A server child process; killed when dropped.
pub struct Running {
    child: Child,
}

/// With `--parent-stdin`, a server exits once its standard input closes: a benchmark
/// killed before it could stop its servers leaves none behind.
pub fn exit_with_stdin() {
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
}

/// A started server and where it listens.
pub struct Started {
    pub running: Running,
    pub url: String,
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The child-process side: serve `what` until killed.
pub fn serve(what: &str) -> Result<(), String> {
    match what {
        "wsrpc" => serve_wsrpc(),
        "bare" => serve_bare(),
        "jsonrpsee" => {
            crate::jsonrpsee_peer::serve();
            Ok(())
        }
        other => Err(format!("no server called {other}")),
    }
}

fn say_listening(addr: std::net::SocketAddr) {
    println!("listening on {addr}");
    let _ = std::io::stdout().flush();
}

/// A sum as JavaScript prints it: whole sums as integers (every server here answers so).
pub fn js_number(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 9_007_199_254_740_992.0 {
        Value::from(x as i64)
    } else {
        Number::from_f64(x).map_or(Value::Null, Value::Number)
    }
}

/// wsrpc with its default configuration, but for the connection limits (the
/// benchmark opens 10,000 connections from one address).
fn serve_wsrpc() -> Result<(), String> {
    let mut config = wsrpc::ServerConfig::default();
    config.max_connections = 100_000;
    config.max_connections_per_ip = 100_000;
    let server = wsrpc::Server::builder()
        .config(config)
        .bind(("127.0.0.1", 0))
        .map_err(|e| e.to_string())?;
    server.register("sum", |nums: Vec<f64>, _| Ok(js_number(nums.iter().sum())));
    server.event(EVENT);
    server.register("emit", |(event, value): (String, Value), ctx| {
        ctx.server().emit(&event, value)?;
        Ok(true)
    });
    say_listening(server.local_addr());
    loop {
        thread::park();
    }
}

/// The practical upper bound of wsrpc's design: a tungstenite thread-per-connection
/// server that parses each call and answers `sum` on the connection's own thread.
fn serve_bare() -> Result<(), String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    say_listening(listener.local_addr().map_err(|e| e.to_string())?);
    for stream in listener.incoming().flatten() {
        thread::spawn(move || {
            let _ = stream.set_nodelay(true);
            let Ok(mut ws) = tungstenite::accept(stream) else {
                return;
            };
            while let Ok(msg) = ws.read() {
                let Message::Text(text) = msg else { continue };
                let v: Value = serde_json::from_str(&text).unwrap_or_default();
                let sum: f64 = v["params"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_f64).sum())
                    .unwrap_or(0.0);
                let reply = json!({"jsonrpc": "2.0", "result": js_number(sum), "id": v["id"]});
                if ws.send(Message::Text(reply.to_string().into())).is_err() {
                    break;
                }
            }
        });
    }
    Ok(())
}
