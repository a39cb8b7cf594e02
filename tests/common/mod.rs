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

/// `n` raw clients subscribed to `feed`.
pub fn feed_subscribers(server: &Server, n: usize) -> Vec<Raw> {
    (0..n)
        .map(|_| {
            let mut raw = Raw::connect(&url(server, "/"));
            let reply = raw.call("rpc.on", serde_json::json!(["feed"]));
            assert_eq!(reply["result"]["feed"], "ok");
            raw
        })
        .collect()
}

/// Sample `stat` of the server's stats every millisecond until `stop`; the highest.
pub fn peak_of(
    server: &Server,
    stat: fn(&wsrpc::Stats) -> usize,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    let (server, stop) = (server.clone(), stop.clone());
    std::thread::spawn(move || {
        let mut peak = 0;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            peak = peak.max(stat(&server.stats()));
            std::thread::sleep(Duration::from_millis(1));
        }
        peak
    })
}

/// The server's counters without what depends on timing: the threads running now
/// (an idle writer lingers a few seconds) and the writes handed to writer threads
/// (how many depends on how fast clients read).
pub fn without_gauges(mut stats: wsrpc::Stats) -> wsrpc::Stats {
    stats.writer_threads = 0;
    stats.handoff_threads = 0;
    stats.fanout_threads = 0;
    stats.writes_handed_over = 0;
    stats
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

    /// A connection to `path` offering `resume` (a session token, or nothing) in the
    /// `x-wsrpc-resume` header; with the token of its session and whether the server
    /// said it resumed the offered one.
    pub fn session(server: &Server, path: &str, resume: Option<&str>) -> (Raw, String, bool) {
        use tungstenite::client::IntoClientRequest;
        let mut request = url(server, path).into_client_request().unwrap();
        if let Some(token) = resume {
            request
                .headers_mut()
                .insert("x-wsrpc-resume", token.parse().unwrap());
        }
        let (ws, response) = tungstenite::connect(request).expect("websocket handshake");
        let header = |name| {
            response
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        let token = header("x-wsrpc-session").expect("a session token");
        let resumed = header("x-wsrpc-resumed").is_some();
        let raw = Raw { ws };
        raw.tcp().set_read_timeout(Some(DEADLINE)).unwrap();
        (raw, token, resumed)
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

// ---------------------------------------------------------------- added for tests/lifecycle.rs

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

/// A fixture server on exactly `addr` (a port a closed server just freed), made by
/// `builder`; the bind is retried until the port is free or `DEADLINE` passes.
pub fn start_at(addr: SocketAddr, builder: impl Fn() -> wsrpc::ServerBuilder) -> Server {
    let mut server = None;
    let bound = wait_until(|| {
        server = builder().bind(addr).ok();
        server.is_some()
    });
    assert!(bound, "could not bind {addr} again before the deadline");
    let server = server.unwrap();
    fixture::install(&server);
    server
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A loopback TCP proxy in front of a server, to break connections in ways a server
/// cannot: drop them without a close frame, refuse new ones, or stop moving bytes.
/// Each connection is a pair of sockets with a pump thread per direction.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<ProxyShared>,
    acceptor: Option<JoinHandle<()>>,
}

struct ProxyShared {
    target: SocketAddr,
    /// Whether connections are refused, and the live pairs: one lock, so that a pair
    /// set up while `refuse(true)` runs is either refused or seen by `cut_all`.
    state: Mutex<ProxyState>,
    stalled: Mutex<bool>,
    /// Signalled when the stall ends or a pair is cut.
    unstalled: Condvar,
    accepted: AtomicUsize,
    closing: AtomicBool,
}

#[derive(Default)]
struct ProxyState {
    refuse: bool,
    pairs: Vec<Arc<Pair>>,
}

struct Pair {
    client: TcpStream,
    server: TcpStream,
    cut: AtomicBool,
    /// Pump threads still running.
    pumps: AtomicUsize,
}

impl Pair {
    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.server.shutdown(Shutdown::Both);
    }
}

impl Proxy {
    /// A proxy on a port the OS picks, forwarding to `target`.
    pub fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy on loopback");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(ProxyShared {
            target,
            state: Mutex::new(ProxyState::default()),
            stalled: Mutex::new(false),
            unstalled: Condvar::new(),
            accepted: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
        });
        let acceptor = std::thread::spawn({
            let shared = shared.clone();
            move || accept_loop(listener, shared)
        });
        Proxy {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// A proxy in front of `server`.
    pub fn to(server: &Server) -> Proxy {
        Proxy::start(server.local_addr())
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://PROXY{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// Shut down both sockets of every current connection: each side sees its TCP
    /// connection end without a close frame.
    pub fn cut_all(&self) {
        let pairs = std::mem::take(&mut lock(&self.shared.state).pairs);
        for pair in &pairs {
            pair.cut();
        }
        // Wake pumps held by a stall, so they see the cut.
        let _guard = lock(&self.shared.stalled);
        self.shared.unstalled.notify_all();
    }

    /// While set, every accepted connection is closed at once (before any byte is
    /// read): the client's attempts fail, and the server never sees them.
    pub fn refuse(&self, yes: bool) {
        lock(&self.shared.state).refuse = yes;
    }

    /// While set, no byte is forwarded in either direction, and nothing is closed: a
    /// peer that has gone silent. Bytes read meanwhile are forwarded once it ends.
    pub fn stall(&self, yes: bool) {
        *lock(&self.shared.stalled) = yes;
        self.shared.unstalled.notify_all();
    }

    /// Connections accepted so far, refused ones included.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        // accept() only returns for a connection: make one.
        let _ = TcpStream::connect(self.addr);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        self.stall(false);
        self.cut_all();
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<ProxyShared>) {
    for stream in listener.incoming() {
        if shared.closing.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = stream else { continue };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        let mut state = lock(&shared.state);
        state.pairs.retain(|p| p.pumps.load(Ordering::SeqCst) > 0);
        if state.refuse {
            drop(client);
            continue;
        }
        let Ok(server) = TcpStream::connect(shared.target) else {
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (Ok(c1), Ok(c2), Ok(s1), Ok(s2)) = (
            client.try_clone(),
            client.try_clone(),
            server.try_clone(),
            server.try_clone(),
        ) else {
            continue;
        };
        let pair = Arc::new(Pair {
            client,
            server,
            cut: AtomicBool::new(false),
            pumps: AtomicUsize::new(2),
        });
        state.pairs.push(pair.clone());
        drop(state);
        for (from, to) in [(c1, s1), (s2, c2)] {
            let (pair, shared) = (pair.clone(), shared.clone());
            std::thread::spawn(move || {
                pump(from, to, &pair, &shared);
                pair.pumps.fetch_sub(1, Ordering::SeqCst);
            });
        }
    }
}

/// Copy `from` to `to`, holding bytes while the proxy is stalled. The end of `from`
/// is passed on as the end of `to`'s writing half; an error cuts the pair.
fn pump(mut from: TcpStream, mut to: TcpStream, pair: &Pair, shared: &ProxyShared) {
    let mut buf = [0u8; 16 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => n,
            Err(_) => break,
        };
        {
            let mut stalled = lock(&shared.stalled);
            while *stalled && !pair.cut.load(Ordering::SeqCst) {
                stalled = shared
                    .unstalled
                    .wait(stalled)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
        }
        if pair.cut.load(Ordering::SeqCst) || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    pair.cut();
}

/// A child process killed (and reaped) when dropped, so a failing test leaves none.
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
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

/// Helpers added for `tests/hostile.rs`: a client that writes WebSocket frames byte
/// by byte on a plain TCP stream (unmasked, truncated, lying about their length), after
/// an upgrade done by hand.
pub struct Wire {
    pub tcp: TcpStream,
    /// Bytes read past the end of the handshake response, not yet parsed.
    pending: Vec<u8>,
}

/// One frame as the server sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct WireFrame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

/// WebSocket opcodes, for [`ws_frame`].
pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;

/// The bytes of one frame: `first` is the first header byte as sent (FIN, RSV bits and
/// opcode), `mask` masks the payload as a client must, and the length is encoded in
/// the shortest form.
pub fn ws_frame_raw(first: u8, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    ws_length(&mut out, mask_bit, payload.len() as u64);
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A masked frame (as a client sends it) with FIN set or not.
pub fn ws_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let first = if fin { 0x80 } else { 0 } | opcode;
    ws_frame_raw(first, Some([0x11, 0x22, 0x33, 0x44]), payload)
}

/// The second header byte and extended length of a frame of `len` bytes.
pub fn ws_length(out: &mut Vec<u8>, mask_bit: u8, len: u64) {
    match len {
        0..=125 => out.push(mask_bit | len as u8),
        126..=0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&len.to_be_bytes());
        }
    }
}

/// The HTTP request of a WebSocket upgrade to `path`, with extra header lines.
pub fn upgrade_request(server: &Server, path: &str, extra: &[&str]) -> String {
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
        server.local_addr()
    );
    for line in extra {
        request.push_str(line);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    request
}

impl Wire {
    /// Connect and upgrade by hand; panics unless the server answers 101.
    pub fn connect(server: &Server, path: &str) -> Wire {
        let tcp = TcpStream::connect(server.local_addr()).expect("connect");
        tcp.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut wire = Wire {
            tcp,
            pending: Vec::new(),
        };
        wire.send(upgrade_request(server, path, &[]).as_bytes())
            .expect("send the upgrade request");
        let head = wire.read_http_head().expect("a handshake response");
        assert!(
            head.starts_with("HTTP/1.1 101"),
            "the upgrade was refused: {head}"
        );
        wire
    }

    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        self.tcp.write_all(bytes)
    }

    /// Read up to the end of an HTTP response head; what follows stays pending.
    fn read_http_head(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.pending.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = self.pending.drain(..end + 4).collect();
                return Some(String::from_utf8_lossy(&head).into_owned());
            }
            if !self.fill() {
                return None;
            }
        }
    }

    /// Read more bytes; `false` at the end of the stream (or an error or timeout).
    fn fill(&mut self) -> bool {
        use std::io::Read;
        let mut chunk = [0u8; 64 << 10];
        match self.tcp.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.pending.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    fn take(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.pending.len() < n {
            if !self.fill() {
                return None;
            }
        }
        Some(self.pending.drain(..n).collect())
    }

    /// The next frame from the server; `None` when the connection ended first.
    pub fn read_frame(&mut self) -> Option<WireFrame> {
        let head = self.take(2)?;
        assert_eq!(head[1] & 0x80, 0, "the server masked a frame");
        let len = match head[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes(self.take(2)?.try_into().unwrap())),
            127 => u64::from_be_bytes(self.take(8)?.try_into().unwrap()),
            n => u64::from(n),
        };
        let payload = self.take(len as usize)?;
        Some(WireFrame {
            fin: head[0] & 0x80 != 0,
            opcode: head[0] & 0x0f,
            payload,
        })
    }

    /// Skip frames up to the server's close frame; its code (1005 for none), or
    /// `None` when the connection ended without one.
    pub fn recv_close(&mut self) -> Option<u16> {
        loop {
            let frame = self.read_frame()?;
            if frame.opcode == OP_CLOSE {
                return Some(match frame.payload.get(..2) {
                    Some(code) => u16::from_be_bytes([code[0], code[1]]),
                    None => 1005,
                });
            }
        }
    }

    /// Whether the server ends the connection (EOF or reset) before `DEADLINE`,
    /// whatever it sends first.
    pub fn ends(&mut self) -> bool {
        use std::io::Read;
        let end = Instant::now() + DEADLINE;
        let mut chunk = [0u8; 64 << 10];
        while Instant::now() < end {
            match self.tcp.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
                Err(_) => return true,
            }
        }
        false
    }
}

/// The resident memory of this process (servers under test run in it), in KiB.
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmRSS line")
}

/// `__listMethods` of the fixture's namespace `/`: it names each of `names` (methods,
/// the protocol's own included) and no event.
pub fn assert_lists_methods(methods: &[String], names: &[&str]) {
    for name in names {
        assert!(
            methods.iter().any(|m| m == name),
            "{name} missing from {methods:?}"
        );
    }
    assert!(!methods.iter().any(|m| m == "newsUpdate"), "{methods:?}");
}
