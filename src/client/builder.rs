//! How a client is set up: [`ClientBuilder`] with the rpc-websockets options, the
//! reconnect and heartbeat options, and the callbacks; and [`CloseInfo`], what a close
//! callback learns.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::reconnect::ReconnectPolicy;
use super::{Client, link};
use crate::error::Error;
use crate::protocol::Codec;
use crate::transport::Heartbeat;

type Callback<T> = Option<Arc<dyn Fn(&T) + Send + Sync>>;

/// Why a connection of the client ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseKind {
    /// Closed cleanly: by [`Client::close`], or by the server with code 1000. No retry.
    Closed,
    /// The connection dropped: no close frame, a close with any code but 1000 (1001
    /// "going away" included: a restarting server), or a server silent past the peer
    /// timeout. Retried.
    Lost,
    /// No connection could be made. Retried if `retry_if_unreachable`, or if the
    /// client has been connected before.
    Unreachable,
}

/// How a connection (or an attempt at one) ended: given to [`ClientBuilder::on_close`]
/// exactly once per close.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CloseInfo {
    /// Why it ended.
    pub kind: CloseKind,
    /// The close code (1006 when there was no close frame).
    pub code: u16,
    /// The close reason, or what went wrong.
    pub reason: String,
    /// Retries already made since the client was last connected.
    pub retries: u32,
    /// How long the client waits before its next attempt, if it makes one.
    pub next_delay: Option<Duration>,
    /// Whether the client will try to reconnect.
    pub reconnecting: bool,
    pub(super) stop: Arc<AtomicBool>,
}

impl CloseInfo {
    /// Make no further attempts (until [`Client::open`] is called). The client waits
    /// for `on_close` to return before it retries, so this takes effect at once.
    pub fn stop_reconnecting(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

#[derive(Default)]
pub(super) struct Hooks {
    pub open: Option<Arc<dyn Fn() + Send + Sync>>,
    pub close: Callback<CloseInfo>,
    pub error: Callback<Error>,
}

/// What the client's threads need to know of its options.
pub(super) struct Options {
    #[cfg(feature = "tls")]
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub policy: ReconnectPolicy,
    pub timeout: Duration,
    pub codec: Codec,
    pub heartbeat: Heartbeat,
    pub wait_while_reconnecting: bool,
    /// Events that may wait for the callback thread; more are dropped.
    pub callback_queue: usize,
}

/// The callback queue's default capacity, in events.
const CALLBACK_QUEUE: usize = 1024;

/// Options of a [`Client`]: those of rpc-websockets, plus backoff, heartbeats and codec.
///
/// ```no_run
/// use std::time::Duration;
/// let client = wsrpc::Client::builder("ws://127.0.0.1:8080/chat")
///     .initial_retry_delay(Duration::from_millis(500))
///     .max_retries(-1) // forever
///     .timeout(Duration::from_secs(5))
///     .header("Authorization", "Bearer x")
///     .on_close(|c| eprintln!("{:?}: {} {}, retrying: {}", c.kind, c.code, c.reason, c.reconnecting))
///     .connect()?;
/// # Ok::<(), wsrpc::Error>(())
/// ```
#[must_use = "a builder does nothing until connect() or build() is called"]
pub struct ClientBuilder {
    url: String,
    autoconnect: bool,
    reconnect: bool,
    options: Options,
    headers: Vec<(String, String)>,
    socket_id: Option<String>,
    hooks: Hooks,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header names only (their values may be credentials); the URL without query.
        let url = self.url.split(['?', '#']).next().unwrap_or("");
        let headers: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("ClientBuilder")
            .field("url", &url)
            .field("autoconnect", &self.autoconnect)
            .field("reconnect", &self.reconnect)
            .field("policy", &self.options.policy)
            .field("timeout", &self.options.timeout)
            .field("codec", &self.options.codec)
            .field("heartbeat", &self.options.heartbeat)
            .field(
                "wait_while_reconnecting",
                &self.options.wait_while_reconnecting,
            )
            .field("callback_queue", &self.options.callback_queue)
            .field("headers", &headers)
            .field("socket_id", &self.socket_id.is_some())
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    pub(super) fn new(url: &str) -> Self {
        ClientBuilder {
            url: url.to_owned(),
            autoconnect: true,
            reconnect: true,
            options: Options {
                #[cfg(feature = "tls")]
                tls: None,
                policy: ReconnectPolicy::default(),
                timeout: Duration::from_secs(30),
                codec: Codec::Json,
                heartbeat: Heartbeat {
                    ping_interval: Some(Duration::from_secs(30)),
                    peer_timeout: Some(Duration::from_secs(40)),
                },
                wait_while_reconnecting: false,
                callback_queue: CALLBACK_QUEUE,
            },
            headers: Vec::new(),
            socket_id: None,
            hooks: Hooks::default(),
        }
    }

    /// With [`build`](Self::build): connect in the background at once (default `true`);
    /// with `false` the client waits for [`Client::open`].
    pub fn autoconnect(mut self, yes: bool) -> Self {
        self.autoconnect = yes;
        self
    }

    /// Reconnect after the connection drops (default `true`); `false` makes no retry
    /// at all (rpc-websockets' `reconnect`).
    pub fn reconnect(mut self, yes: bool) -> Self {
        self.reconnect = yes;
        self
    }

    /// rpc-websockets' `reconnect_interval`: the same as
    /// [`initial_retry_delay`](Self::initial_retry_delay).
    pub fn reconnect_interval(self, interval: Duration) -> Self {
        self.initial_retry_delay(interval)
    }

    /// rpc-websockets' `max_reconnects`: `n` retries, 0 meaning no limit (the same as
    /// [`max_retries`](Self::max_retries) with `-1`).
    pub fn max_reconnects(self, n: u32) -> Self {
        self.max_retries(if n == 0 { -1 } else { i64::from(n) })
    }

    /// Wait before the first retry (default 1.5 s).
    pub fn initial_retry_delay(mut self, delay: Duration) -> Self {
        self.options.policy.initial_delay = delay;
        self
    }

    /// Longest wait between retries (default 300 s).
    pub fn max_retry_delay(mut self, delay: Duration) -> Self {
        self.options.policy.max_delay = delay;
        self
    }

    /// Each wait is the previous one times this (default 1.5).
    pub fn retry_delay_growth(mut self, factor: f64) -> Self {
        self.options.policy.growth = factor;
        self
    }

    /// Each wait is moved at random by up to this fraction either way (default 0.1);
    /// 0 means no randomness at all.
    pub fn retry_delay_jitter(mut self, fraction: f64) -> Self {
        self.options.policy.jitter = fraction;
        self
    }

    /// Retries after a drop before giving up (default 15); -1 retries forever.
    pub fn max_retries(mut self, retries: i64) -> Self {
        self.options.policy.max_retries = retries;
        self
    }

    /// Retry when the server could not be reached at all, before the client was ever
    /// connected (default `true`).
    pub fn retry_if_unreachable(mut self, yes: bool) -> Self {
        self.options.policy.retry_if_unreachable = yes;
        self
    }

    /// Calls made while the client is reconnecting wait for the connection (up to
    /// their timeout) and are sent once login and subscriptions are restored. Default
    /// `false`: they fail at once with [`Error::NotConnected`]. A call made this way
    /// from inside a callback holds up the callback thread (and every event behind
    /// it) until the connection is back or its timeout passes.
    pub fn wait_while_reconnecting(mut self, yes: bool) -> Self {
        self.options.wait_while_reconnecting = yes;
        self
    }

    /// Ping the server after this long without hearing from it (default 30 s; `None`:
    /// never).
    pub fn ping_interval(mut self, every: Option<Duration>) -> Self {
        self.options.heartbeat.ping_interval = every;
        self
    }

    /// Treat the connection as lost when the server has not been heard from (not even
    /// a pong) for this long (default 40 s; `None`: never).
    pub fn peer_timeout(mut self, after: Option<Duration>) -> Self {
        self.options.heartbeat.peer_timeout = after;
        self
    }

    /// How long a call waits for its reply unless it says otherwise (default 30 s).
    /// Also bounds connecting (name lookup, TCP connect and handshake together) and a
    /// send blocked on a server that stopped reading: such a send fails with
    /// [`Error::Timeout`] and the connection is cut (and retried). `Duration::MAX`
    /// means no limit.
    ///
    /// A name lookup or TCP connect cannot be interrupted: [`Client::close`] does not
    /// wait for one, and the thread making it ends by itself once it returns.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.options.timeout = timeout;
        self
    }

    /// How many events may wait for the callback thread (default 1024). When a slow
    /// callback lets the queue fill, further events are dropped (the newest, as they
    /// arrive) rather than held in memory or left to block the connection: each is
    /// counted in [`Client::dropped_events`], and once the callback thread catches up,
    /// `on_error` gets [`Error::EventsDropped`] with the count (and a warning is
    /// logged). Opens, closes and failed attempts are never dropped. At least 1.
    pub fn callback_queue(mut self, events: usize) -> Self {
        self.options.callback_queue = events.max(1);
        self
    }

    /// An extra header for the WebSocket handshake.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Ask the server to use this socket id (sent as `?socket_id=`).
    /// The session token of a server with `session_ttl` is offered back in the
    /// `X-Wsrpc-Resume` request header, never in the URL (where it would end up in
    /// access logs).
    pub fn socket_id(mut self, id: &str) -> Self {
        self.socket_id = Some(id.to_owned());
        self
    }

    /// Speak MessagePack (binary frames) instead of JSON (default `false`). The
    /// client asks for it with `?encoding=msgpack`; replies are read in whichever
    /// codec the server sends, so it also works with servers that ignore the query.
    pub fn msgpack(mut self, yes: bool) -> Self {
        self.options.codec = if yes { Codec::MsgPack } else { Codec::Json };
        self
    }

    /// The rustls settings for `wss://` URLs (feature `tls`). Default: the Mozilla root
    /// certificates (webpki-roots) with rustls' ring provider.
    #[cfg(feature = "tls")]
    pub fn tls_config(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.options.tls = Some(config);
        self
    }

    /// Called on the callback thread each time a connection opens; after a reconnect,
    /// once login and subscriptions are restored.
    pub fn on_open(mut self, f: impl Fn() + Send + Sync + 'static) -> Self {
        self.hooks.open = Some(Arc::new(f));
        self
    }

    /// Called on the callback thread once for each close of a connection and each
    /// failed attempt to make one, with why and what happens next. The client waits
    /// for it to return before it retries (so that
    /// [`stop_reconnecting`](CloseInfo::stop_reconnecting) takes effect), and it runs
    /// after the event callbacks queued before it: a slow event callback delays
    /// retries only when an `on_close` is set.
    pub fn on_close(mut self, f: impl Fn(&CloseInfo) + Send + Sync + 'static) -> Self {
        self.hooks.close = Some(Arc::new(f));
        self
    }

    /// Called on the callback thread for errors no call returns: failed attempts to
    /// connect, unreadable frames, failed re-subscriptions.
    pub fn on_error(mut self, f: impl Fn(&Error) + Send + Sync + 'static) -> Self {
        self.hooks.error = Some(Arc::new(f));
        self
    }

    /// Connect now and return the client, or the error of this first attempt.
    pub fn connect(mut self) -> Result<Client, Error> {
        self.autoconnect = false;
        let client = self.build();
        client.open()?;
        Ok(client)
    }

    /// Return the client at once; it connects in the background if `autoconnect`.
    pub fn build(mut self) -> Client {
        let mut query = Vec::new();
        if let Some(id) = &self.socket_id {
            query.push(("socket_id", id.as_str()));
        }
        if self.options.codec == Codec::MsgPack {
            query.push(("encoding", "msgpack"));
        }
        let target = link::Target::new(&self.url, &query, &self.headers);
        if !self.reconnect {
            self.options.policy.max_retries = 0;
            self.options.policy.retry_if_unreachable = false;
        }
        Client::start(target, self.options, self.hooks, self.autoconnect)
    }
}
