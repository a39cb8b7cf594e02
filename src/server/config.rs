//! How a server is set up: [`ServerConfig`] (limits and threads, with defaults) and
//! [`ServerBuilder`] (config, lifecycle callbacks, address).

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use super::Server;
use crate::error::Error;
use crate::transport::Heartbeat;

/// Limits and thread settings of a server. Every field has a default; change the ones
/// you need:
///
/// ```
/// let mut config = wsrpc::ServerConfig::default();
/// config.max_message_size = 1 << 20;
/// let server = wsrpc::Server::builder().config(config).bind("127.0.0.1:0").unwrap();
/// server.close();
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Largest incoming message, in bytes, after reassembling its frames. Default 16 MiB.
    pub max_message_size: usize,
    /// Largest incoming frame payload, in bytes. Default 16 MiB.
    pub max_frame_size: usize,
    /// Read buffer of each connection, in bytes. Default 1 KiB: an idle connection
    /// stays small, and larger messages still arrive whole (the buffer grows to fit a
    /// frame). tungstenite zero-fills the free part of it before each read, so a large
    /// one also costs time on every call.
    pub read_buffer_size: usize,
    /// Stack size of connection threads, which run the handlers. Default 512 KiB: JSON
    /// nested as deep as serde_json allows (128 levels) parses with room to spare in a
    /// debug build. Untouched stack costs no memory. The short-lived thread of each
    /// handshake reserves four times this (address space, not memory), so that no
    /// connection's thread is started on a stack a handshake has used.
    pub stack_size: usize,
    /// Frames (events, close) waiting to be written to one connection. A client that
    /// lets this many pile up is disconnected (close code 1008, "outgoing queue full")
    /// so that it cannot hold up anyone else. Default 1024.
    pub outgoing_queue: usize,
    /// How long a new TCP connection may take to finish its WebSocket handshake.
    /// Default 10 s.
    pub handshake_timeout: Duration,
    /// How long [`Server::close`] waits for clients to answer its close frame before
    /// dropping their connections. Default 2 s.
    pub close_timeout: Duration,
    /// A handler still running after this long stops delaying the later requests of its
    /// connection: another thread takes over reading them. Default 20 ms.
    pub slow_call_threshold: Duration,
    /// Handlers that may run at once for one connection. Past it, a connection's later
    /// requests wait for one of its running handlers to return. Default 32.
    pub max_calls_in_flight: usize,
    /// Ping a client after this long without hearing from it. Default 30 s; `None`
    /// never pings.
    pub ping_interval: Option<Duration>,
    /// Close a client not heard from (not even a pong) for this long; it is reported as
    /// code 1006, "peer timed out". Default 40 s; `None` waits forever. Idle
    /// connections cost no timer thread: their reader wakes every half of the shorter
    /// of the two periods.
    pub peer_timeout: Option<Duration>,
    /// Keep the session of a client whose connection dropped (it sent no close frame)
    /// this long: its socket id, login, subscriptions and the events emitted to it
    /// meanwhile. A client that reconnects offering the session's token (sent in the
    /// handshake response header `X-Wsrpc-Session`; offered back in the request header
    /// `X-Wsrpc-Resume` or as `?resume=`) gets it back, the missed events first, in
    /// order. The Rust client does this by itself. Default `None`: no sessions kept.
    ///
    /// The token (128 bits from the operating system's secure random source) is the
    /// session: whoever holds it can resume it. Prefer the header: a token offered as
    /// `?resume=` (browsers cannot set headers) is part of the URL and ends up in access
    /// logs and the logs of proxies on the way. Serve sessions over TLS.
    pub session_ttl: Option<Duration>,
    /// Events kept for one disconnected session; a session that misses more cannot be
    /// resumed and is dropped. Default 1024.
    pub session_buffer: usize,
    /// Disconnected sessions kept at once; past it the oldest is given up, so clients
    /// that vanish in numbers cannot make the server hold ever more. Default 1,000.
    pub max_parked_sessions: usize,
    /// Connections open at once; more are refused at once with HTTP 503, before any
    /// thread is started for them. Default 10,000.
    pub max_connections: usize,
    /// Connections open at once from one client address; more are refused with HTTP
    /// 429. Default 1,000.
    pub max_connections_per_ip: usize,
    /// Requests in one batch; a larger batch gets `-32600` as a whole. Default 1,000.
    pub max_batch_size: usize,
    /// Browser origins allowed to connect (exact `Origin` header values, such as
    /// `https://example.com`); others get HTTP 403. Requests without an `Origin`
    /// header (non-browser clients) are not affected. Default `None`: any origin.
    pub allowed_origins: Option<Vec<String>>,
    /// Refuse (HTTP 404) a connection whose path names no namespace with anything
    /// registered. Default `false`: such a client gets an empty namespace, as in
    /// rpc-websockets.
    pub refuse_unknown_namespaces: bool,
    /// Most threads, server-wide, that write events and close frames to clients whose
    /// socket buffer is full (while a plain-TCP client keeps up, the dispatcher writes
    /// to it directly, without waiting, and no writer is involved; TLS clients are
    /// always written to by a writer; see
    /// [`Stats::writes_handed_over`](super::Stats::writes_handed_over)).
    /// They are a pool: a writer serves one connection until its queue is empty, then
    /// the next connection waiting, and ends after 5 s without work. Past this many
    /// busy writers, connections wait for one to be free (counted in
    /// [`Stats::writers_at_cap`](super::Stats::writers_at_cap)). A writer blocked on a
    /// client that stopped reading holds its thread until `peer_timeout` cuts that
    /// client off; while every writer is so blocked and connections wait, the pool
    /// starts another within a few milliseconds, up to this cap. Default 256.
    pub max_writer_threads: usize,
    /// Most threads, server-wide, that keep slow handlers running after their
    /// connection has gone on reading in a new thread (see `slow_call_threshold`).
    /// Past this many, a connection whose handler runs long reads its next requests
    /// only when that handler returns (counted in
    /// [`Stats::handoffs_at_cap`](super::Stats::handoffs_at_cap)). Default 256.
    pub max_handoff_threads: usize,
    /// How long a message may take to arrive, from its first byte to its last (its
    /// frames and whatever the client sends between them). A client slower than that
    /// is closed with code 1008, "message took too long"; heartbeat pongs do not count
    /// as progress. Default 20 s; `None` waits forever.
    pub message_timeout: Option<Duration>,
    /// Bytes of incoming messages that the connections from one client address may
    /// hold at once: messages being received, and those whose handler is still
    /// running. Each connection's first 16 KiB are not counted. The connection whose
    /// message would pass it is closed with code 1013 at the message's frame header,
    /// before its payload is read. Default 64 MiB.
    pub max_message_bytes_per_ip: usize,
    /// The same budget for all connections together. Default 512 MiB.
    pub max_message_bytes: usize,
}

/// Bytes of incoming messages each connection holds without counting them against
/// `max_message_bytes_per_ip` and `max_message_bytes`: everyday calls never touch the
/// shared counts.
pub(crate) const FREE_MESSAGE_BYTES: usize = 16 << 10;

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_message_size: 16 << 20,
            max_frame_size: 16 << 20,
            read_buffer_size: 1 << 10,
            stack_size: 512 << 10,
            outgoing_queue: 1024,
            handshake_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(2),
            slow_call_threshold: Duration::from_millis(20),
            max_calls_in_flight: 32,
            ping_interval: Some(Duration::from_secs(30)),
            peer_timeout: Some(Duration::from_secs(40)),
            session_ttl: None,
            session_buffer: 1024,
            max_parked_sessions: 1_000,
            max_connections: 10_000,
            max_connections_per_ip: 1_000,
            max_batch_size: 1_000,
            allowed_origins: None,
            refuse_unknown_namespaces: false,
            max_writer_threads: 256,
            max_handoff_threads: 256,
            message_timeout: Some(Duration::from_secs(20)),
            max_message_bytes_per_ip: 64 << 20,
            max_message_bytes: 512 << 20,
        }
    }
}

impl ServerConfig {
    pub(crate) fn heartbeat(&self) -> Heartbeat {
        Heartbeat {
            ping_interval: self.ping_interval,
            peer_timeout: self.peer_timeout,
        }
    }

    /// Stack size of the thread that runs a connection's handshake (and
    /// `on_connection`) before its read loop moves to a thread of `stack_size`.
    ///
    /// More than four times `stack_size`, so that glibc never hands a handshake's
    /// stack to a read loop: glibc keeps the stacks of ended threads and gives one to a
    /// new thread asking for anything from a quarter of its size to all of it, and an
    /// ended thread's stack keeps the 16 KiB below where it ended resident. A read
    /// loop on a handshake's stack held five pages for the connection's life instead
    /// of two. The extra size
    /// is address space only, for as long as a handshake lasts. Past a `stack_size` of
    /// 16 MiB (where a few pages matter less than a large mapping) it is `stack_size`.
    pub(crate) fn handshake_stack_size(&self) -> usize {
        if self.stack_size > 16 << 20 {
            return self.stack_size;
        }
        self.stack_size * 4 + (64 << 10)
    }

    pub(crate) fn websocket(&self) -> tungstenite::protocol::WebSocketConfig {
        tungstenite::protocol::WebSocketConfig::default()
            .read_buffer_size(self.read_buffer_size)
            .max_message_size(Some(self.max_message_size))
            // tungstenite checks the frame limit at the header but the message limit
            // only once the frame is in: a frame over the message limit is refused
            // before it is buffered.
            .max_frame_size(Some(self.max_frame_size.min(self.max_message_size)))
    }
}

/// What a server knows about a new connection: given to
/// [`ServerBuilder::on_connection`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectionInfo {
    /// The connection's id (from `?socket_id=`, or a random UUID made up by the server),
    /// unique among the open connections of its namespace: a connection that asks for
    /// one held by another is refused with HTTP 409.
    pub socket_id: String,
    /// The namespace, that is the URL path (`/` for none).
    pub namespace: String,
    /// The query string without `?`, empty when there was none.
    pub query: String,
    /// Request headers in the order they came.
    pub headers: Vec<(String, String)>,
    /// The client's address.
    pub peer_addr: Option<SocketAddr>,
}

impl ConnectionInfo {
    /// The first header named `name`, compared without regard to case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The first query parameter named `name`, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        query_param(&self.query, name)
    }
}

/// How a connection ended: given to [`ServerBuilder::on_disconnection`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DisconnectInfo {
    /// The connection's id.
    pub socket_id: String,
    /// Its namespace.
    pub namespace: String,
    /// The close code: the client's, the server's when it closed the connection, 1005
    /// for a close frame without one, 1006 when the TCP connection simply ended.
    pub code: u16,
    /// The close reason, possibly empty.
    pub reason: String,
}

type Callback<T> = Arc<dyn Fn(&T) + Send + Sync>;

/// What [`ServerBuilder::setup`] runs before the first connection is accepted.
pub(crate) type Setup = Box<dyn FnOnce(&Server) + Send>;

#[derive(Clone, Default)]
pub(crate) struct Hooks {
    pub listening: Option<Callback<SocketAddr>>,
    pub connection: Option<Callback<ConnectionInfo>>,
    pub disconnection: Option<Callback<DisconnectInfo>>,
    pub error: Option<Callback<Error>>,
}

impl Hooks {
    pub(crate) fn listening(&self, addr: &SocketAddr) {
        call("on_listening", &self.listening, addr);
    }

    pub(crate) fn connection(&self, info: &ConnectionInfo) {
        call("on_connection", &self.connection, info);
    }

    pub(crate) fn disconnection(&self, info: &DisconnectInfo) {
        call("on_disconnection", &self.disconnection, info);
    }

    pub(crate) fn error(&self, error: &Error) {
        call("on_error", &self.error, error);
    }
}

/// Run a user callback so that its panic is logged instead of ending a server thread
/// halfway through its bookkeeping.
fn call<T>(name: &str, hook: &Option<Callback<T>>, arg: &T) {
    if let Some(hook) = hook {
        let run = std::panic::AssertUnwindSafe(|| hook(arg));
        if std::panic::catch_unwind(run).is_err() {
            crate::log_limit::error_limited!("the {name} callback panicked");
        }
    }
}

/// Sets up and starts a [`Server`].
///
/// ```
/// let server = wsrpc::Server::builder()
///     .on_connection(|c| println!("{} joined {}", c.socket_id, c.namespace))
///     .bind("127.0.0.1:0")
///     .unwrap();
/// println!("listening on {}", server.local_addr());
/// server.close();
/// ```
#[derive(Default)]
#[must_use = "a builder does nothing until bind() is called"]
pub struct ServerBuilder {
    pub(crate) config: ServerConfig,
    pub(crate) hooks: Hooks,
    pub(crate) setup: Option<Setup>,
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
}

impl std::fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut debug = f.debug_struct("ServerBuilder");
        debug
            .field("config", &self.config)
            .field("setup", &self.setup.is_some());
        #[cfg(feature = "tls")]
        debug.field("tls", &self.tls.is_some());
        debug.finish_non_exhaustive()
    }
}

impl ServerBuilder {
    /// Use these limits and thread settings.
    pub fn config(mut self, config: ServerConfig) -> Self {
        self.config = config;
        self
    }

    /// Called once the server listens, with its address.
    pub fn on_listening(mut self, f: impl Fn(&SocketAddr) + Send + Sync + 'static) -> Self {
        self.hooks.listening = Some(Arc::new(f));
        self
    }

    /// Called on the connection's thread when a client has connected, before its first
    /// request is read.
    pub fn on_connection(mut self, f: impl Fn(&ConnectionInfo) + Send + Sync + 'static) -> Self {
        self.hooks.connection = Some(Arc::new(f));
        self
    }

    /// Called when a connection has ended, with its close code.
    pub fn on_disconnection(mut self, f: impl Fn(&DisconnectInfo) + Send + Sync + 'static) -> Self {
        self.hooks.disconnection = Some(Arc::new(f));
        self
    }

    /// Called for errors that concern no single request: a failed handshake, a broken
    /// connection, a failed `accept`.
    pub fn on_error(mut self, f: impl Fn(&Error) + Send + Sync + 'static) -> Self {
        self.hooks.error = Some(Arc::new(f));
        self
    }

    /// Serve TLS (`wss://`) with these rustls settings (feature `tls`). Build them with
    /// an explicit crypto provider, such as
    /// `rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))`,
    /// so that no process-wide default provider is needed.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, config: Arc<rustls::ServerConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// Register methods, events and login in `f`, which runs once the server is bound
    /// and before it accepts its first connection: no client can find the server
    /// half set up (a method not there yet, or there but not yet protected).
    ///
    /// ```
    /// use wsrpc::{RpcError, Server};
    /// let server = Server::builder()
    ///     .setup(|s| {
    ///         s.register("admin", |_: (), _| Ok::<_, RpcError>("secret")).protected();
    ///         s.set_auth(|token: String, _| Ok(token == "let me in"));
    ///         s.event("news");
    ///     })
    ///     .bind("127.0.0.1:0")?;
    /// server.close();
    /// # Ok::<(), wsrpc::Error>(())
    /// ```
    pub fn setup(mut self, f: impl FnOnce(&Server) + Send + 'static) -> Self {
        self.setup = Some(Box::new(f));
        self
    }

    /// Bind to `addr` (port 0 picks a free port) and start serving.
    pub fn bind(self, addr: impl ToSocketAddrs) -> Result<Server, Error> {
        Server::start(self, addr)
    }
}

/// The value of query parameter `name` in `query`, percent-decoded (`+` is a space).
pub(crate) fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// glibc gives a cached thread stack to a new thread asking for a quarter of its
    /// size or more (sizes counted with the guard page): a handshake's stack must be
    /// more than four times a reader's, guard included, and never smaller.
    #[test]
    fn handshake_stacks_are_never_reused_by_readers() {
        let guard = 4 << 10;
        for kib in [64, 508, 512, 1024, 16 << 10] {
            let config = ServerConfig {
                stack_size: kib << 10,
                ..ServerConfig::default()
            };
            let (reader, handshake) = (
                config.stack_size + guard,
                config.handshake_stack_size() + guard,
            );
            assert!(handshake > 4 * reader, "{kib} KiB");
        }
        let config = ServerConfig {
            stack_size: 64 << 20,
            ..ServerConfig::default()
        };
        assert_eq!(config.handshake_stack_size(), 64 << 20);
    }

    #[test]
    fn query_params_are_found_and_decoded() {
        let q = "a=1&socket_id=my%20id&flag&x=%zz&y=a+b";
        assert_eq!(query_param(q, "socket_id").as_deref(), Some("my id"));
        assert_eq!(query_param(q, "a").as_deref(), Some("1"));
        assert_eq!(query_param(q, "flag").as_deref(), Some(""));
        assert_eq!(query_param(q, "x").as_deref(), Some("%zz"));
        assert_eq!(query_param(q, "y").as_deref(), Some("a b"));
        assert_eq!(query_param(q, "nope"), None);
        assert_eq!(query_param("t=%4", "t").as_deref(), Some("%4"));
        assert_eq!(query_param("t=%41", "t").as_deref(), Some("A"));
    }
}
