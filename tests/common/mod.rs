//! Helpers shared by the integration tests: the fixture server, a raw WebSocket client
//! for exact frames, and waiting on a condition with a deadline.
#![allow(dead_code)]

pub mod fixture;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};
use wsrpc::Server;

/// How long any single wait in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// The fixture server on a port the OS picks.
pub fn start() -> Server {
    start_with(Server::builder())
}

pub fn start_with(builder: wsrpc::ServerBuilder) -> Server {
    let server = builder.bind("127.0.0.1:0").expect("bind on loopback");
    fixture::install(&server);
    server
}

/// `ws://127.0.0.1:PORT{path}`.
pub fn url(server: &Server, path: &str) -> String {
    format!("ws://{}{}", server.local_addr(), path)
}

/// Poll `condition` until it holds or `DEADLINE` passes; returns whether it held.
pub fn wait_until(mut condition: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + DEADLINE;
    while Instant::now() < end {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    condition()
}

/// A bare WebSocket client that sends and reads frames as they are.
pub struct Raw {
    pub ws: WebSocket<MaybeTlsStream<TcpStream>>,
}

impl Raw {
    pub fn connect(url: &str) -> Raw {
        let (ws, _) = tungstenite::connect(url).expect("websocket handshake");
        if let MaybeTlsStream::Plain(s) = ws.get_ref() {
            s.set_read_timeout(Some(DEADLINE)).unwrap();
        }
        Raw { ws }
    }

    pub fn send_text(&mut self, text: &str) {
        self.ws.send(Message::Text(text.into())).expect("send");
    }

    pub fn send_binary(&mut self, bytes: &[u8]) {
        self.ws
            .send(Message::Binary(bytes.to_vec().into()))
            .expect("send");
    }

    /// The next data frame, as text (binary frames are shown lossily).
    pub fn recv_text(&mut self) -> String {
        loop {
            match self.ws.read().expect("a frame before the deadline") {
                Message::Text(t) => return t.to_string(),
                Message::Binary(b) => return String::from_utf8_lossy(&b).into_owned(),
                Message::Close(c) => panic!("connection closed: {c:?}"),
                _ => continue,
            }
        }
    }

    pub fn recv(&mut self) -> Value {
        serde_json::from_str(&self.recv_text()).expect("a JSON frame")
    }

    /// Send `frame` and read the reply.
    pub fn request(&mut self, frame: &str) -> Value {
        self.send_text(frame);
        self.recv()
    }

    /// A call with params and id 1; returns the reply.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let frame =
            serde_json::json!({"jsonrpc": "2.0", "method": method, "params": params, "id": 1});
        self.request(&frame.to_string())
    }
}

/// Helpers added for `tests/contract.rs` and `tests/server.rs`.
impl Raw {
    /// Connect with a prepared handshake request (extra headers and the like).
    pub fn connect_request(request: tungstenite::handshake::client::Request) -> Raw {
        let (ws, _) = tungstenite::connect(request).expect("websocket handshake");
        if let MaybeTlsStream::Plain(s) = ws.get_ref() {
            s.set_read_timeout(Some(DEADLINE)).unwrap();
        }
        Raw { ws }
    }

    /// The next frame other than ping and pong, close frames included, as it came.
    pub fn recv_message(&mut self) -> Message {
        loop {
            match self.ws.read().expect("a frame before the deadline") {
                Message::Ping(_) | Message::Pong(_) => continue,
                other => return other,
            }
        }
    }

    /// Read until the peer's close frame and answer it at once, as a browser would;
    /// returns its code (1005 when it had none) and reason. Data frames before it are
    /// skipped.
    pub fn recv_close(&mut self) -> (u16, String) {
        loop {
            match self.ws.read() {
                Ok(Message::Close(frame)) => {
                    // tungstenite queues the answer; send it now (the peer may be gone).
                    let _ = self.ws.flush();
                    return match frame {
                        Some(f) => (u16::from(f.code), f.reason.to_string()),
                        None => (1005, String::new()),
                    };
                }
                Ok(_) => continue,
                Err(e) => panic!("connection ended without a close frame: {e}"),
            }
        }
    }

    /// The underlying TCP stream.
    pub fn tcp(&self) -> &TcpStream {
        match self.ws.get_ref() {
            MaybeTlsStream::Plain(s) => s,
            _ => unreachable!("loopback tests use plain TCP"),
        }
    }
}

/// A server config whose `close()` waits at most `ms` milliseconds for clients that do
/// not answer its close frame.
pub fn quick_close(ms: u64) -> wsrpc::ServerConfig {
    let mut config = wsrpc::ServerConfig::default();
    config.close_timeout = Duration::from_millis(ms);
    config
}

/// Helpers added for `tests/msgpack.rs`.
impl Raw {
    /// Send `value` as a MessagePack map with string keys, in a binary frame.
    pub fn send_msgpack(&mut self, value: &Value) {
        let bytes = rmp_serde::to_vec_named(value).expect("a JSON value encodes");
        self.send_binary(&bytes);
    }

    /// The next data frame, which must be binary; its bytes as they came.
    pub fn recv_binary(&mut self) -> Vec<u8> {
        match self.recv_message() {
            Message::Binary(bytes) => bytes.to_vec(),
            other => panic!("expected a binary frame, got {other:?}"),
        }
    }

    /// The next data frame, which must be a binary MessagePack frame, decoded.
    pub fn recv_msgpack(&mut self) -> Value {
        let bytes = self.recv_binary();
        rmp_serde::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("not MessagePack ({e}): {bytes:02x?}"))
    }

    /// Send `value` as MessagePack and read the MessagePack reply.
    pub fn request_msgpack(&mut self, value: &Value) -> Value {
        self.send_msgpack(value);
        self.recv_msgpack()
    }
}
