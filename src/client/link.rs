//! The client's I/O thread: connects, reads replies and events, and reconnects after a
//! drop on the fixed interval of its [`ReconnectPolicy`](super::reconnect::ReconnectPolicy).

use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::client::Request;
use tungstenite::http::HeaderValue;
use tungstenite::http::header::HeaderName;
use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::{Message, WebSocket};

use super::reconnect::random_unit;
use super::{CloseInfo, CloseKind, Inner, Job, deadline_after, restore_then_open};
use crate::error::{Error, ErrorDetail};
use crate::lock;
use crate::protocol::{Codec, Id, ServerMessage};
use crate::sink::Sink;
use crate::socket::Socket;
use crate::transport::{ConnStream, Idle, close_info, is_timeout};

/// What the client's owner tells its I/O thread.
pub(super) enum Control {
    /// Try to connect now (if not connected).
    Open,
    /// Stop for good.
    Close,
}

/// Where to connect and with what handshake request.
pub(super) struct Target {
    url: String,
    headers: Vec<(String, String)>,
}

impl Target {
    /// `query` pairs are appended to the URL's query, encoded.
    pub(super) fn new(url: &str, query: &[(&str, &str)], headers: &[(String, String)]) -> Self {
        let mut url = with_path(url);
        for (name, value) in query {
            let sep = if url.contains('?') { '&' } else { '?' };
            url = format!("{url}{sep}{name}={}", percent_encode(value));
        }
        Target {
            url,
            headers: headers.to_vec(),
        }
    }

    /// The URL without its query (which may carry a token), for `Debug`.
    pub(super) fn display_url(&self) -> &str {
        self.url.split(['?', '#']).next().unwrap_or("")
    }

    fn request(&self) -> Result<Request, Error> {
        if !self.url.contains("://") {
            // The HTTP parser would only say "HTTP format error".
            return Err(Error::InvalidUrl(format!(
                "{}: the scheme is missing (write ws://{} or, for TLS, wss://)",
                self.display_url(),
                self.display_url()
            )));
        }
        let mut request = self.url.as_str().into_client_request()?;
        for (name, value) in &self.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| Error::InvalidUrl(format!("header {name}: {e}")))?;
            let value = HeaderValue::from_str(value)
                .map_err(|e| Error::InvalidUrl(format!("header value {value}: {e}")))?;
            request.headers_mut().append(name, value);
        }
        Ok(request)
    }
}

/// `ws://host:port?q` has no path, and an HTTP request line needs one: make it `/`.
fn with_path(url: &str) -> String {
    let authority_start = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[authority_start..];
    match rest.find(['/', '?', '#']) {
        Some(i) if rest.as_bytes()[i] == b'/' => url.to_owned(),
        Some(i) => format!("{}/{}", &url[..authority_start + i], &rest[i..]),
        None => format!("{url}/"),
    }
}

/// Characters other than unreserved ones, as `%XX`.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

type Reader = WebSocket<ConnStream>;

/// Headers of the session resume handshake (see the server's `session_ttl`).
const SESSION_HEADER: &str = "x-wsrpc-session";
const RESUME_HEADER: &str = "x-wsrpc-resume";
const RESUMED_HEADER: &str = "x-wsrpc-resumed";

/// A connection, and whether the server resumed the client's session on it.
fn connect_once(inner: &Inner) -> Result<(Reader, Arc<Sink>, bool), Error> {
    let mut request = inner.target.request()?;
    if let Some(token) = inner.state().session_token.clone()
        && let Ok(value) = HeaderValue::from_str(&token)
    {
        request.headers_mut().insert(RESUME_HEADER, value);
    }
    let uri = request.uri();
    let secure = match uri.scheme_str() {
        Some("ws") => false,
        Some("wss") if cfg!(feature = "tls") => true,
        Some("wss") => {
            return Err(Error::InvalidUrl(
                "wss:// needs wsrpc's `tls` feature".into(),
            ));
        }
        _ => {
            return Err(Error::InvalidUrl(format!(
                "{uri}: the scheme must be ws:// or wss://"
            )));
        }
    };
    let host = uri
        .host()
        .unwrap_or("")
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
    // One deadline for the lookup, every address tried and the handshake.
    let deadline = deadline_after(inner.options.timeout);
    let mut last_error = Error::InvalidUrl(format!("{host}: no address"));
    let mut stream = None;
    for addr in resolve(&host, port, deadline, &inner.lookup_running)? {
        if inner.closed.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        let attempt = match deadline {
            None => TcpStream::connect(addr),
            Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => TcpStream::connect_timeout(&addr, left),
                _ => Err(std::io::ErrorKind::TimedOut.into()),
            },
        };
        match attempt {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_error = Error::Io(e),
        }
    }
    let stream = stream.ok_or(last_error)?;
    stream.set_nodelay(true)?;
    // A send blocked on a server that does not read fails instead of hanging: the
    // socket option stays with the socket, so a clone of the handle sets it later.
    let write_timeout = send_bound(inner);
    stream.set_write_timeout(Some(write_timeout))?;
    let tcp = stream.try_clone()?;
    let config = WebSocketConfig::default().read_buffer_size(16 << 10);
    let socket = if secure {
        secure_socket(inner, stream, &host)?
    } else {
        Socket::Plain(stream)
    };
    let sink = Arc::new(Sink::new(socket, Role::Client, config));
    {
        // Visible to `close`, which cuts the attempt short.
        let mut state = inner.state();
        if inner.closed.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        state.connecting = Some(sink.clone());
    }
    let stream = ConnStream::handshaking(sink.clone(), deadline.unwrap_or_else(far_future));
    let handshake = tungstenite::client::client_with_config(request, stream, Some(config));
    lock(&inner.state).connecting = None;
    let (mut reader, response) = handshake.map_err(|e| match e {
        tungstenite::HandshakeError::Failure(e) => Error::from(e),
        tungstenite::HandshakeError::Interrupted(_) => {
            Error::Protocol("the handshake timed out".into())
        }
    })?;
    reader.get_mut().opened(&inner.options.heartbeat)?;
    // `opened` sets the peer timeout as the write timeout: a call's send must not wait
    // longer than the call timeout either.
    tcp.set_write_timeout(Some(write_timeout))?;
    drop(tcp);
    let header = |name| response.headers().get(name).and_then(|v| v.to_str().ok());
    inner.state().session_token = header(SESSION_HEADER).map(str::to_owned);
    let resumed = header(RESUMED_HEADER).is_some();
    Ok((reader, sink, resumed))
}

/// How long one write may wait for the server to read: the client's timeout, or the
/// peer timeout if that is shorter (a socket timeout of zero would mean none).
fn send_bound(inner: &Inner) -> Duration {
    let timeout = match inner.options.heartbeat.peer_timeout {
        Some(peer) => peer.min(inner.options.timeout),
        None => inner.options.timeout,
    };
    timeout.max(Duration::from_millis(1))
}

/// An instant no handshake reaches, for a timeout too large to add to now.
fn far_future() -> Instant {
    let now = Instant::now();
    [100 * 365, 365, 1]
        .into_iter()
        .find_map(|days| now.checked_add(Duration::from_secs(days * 86_400)))
        .unwrap_or(now)
}

/// The addresses of `host`. A name lookup cannot be interrupted and may hang: it runs
/// on a thread of its own, given up at `deadline` (and left to end by itself). One
/// lookup at a time per client (`running`): while a given-up one still hangs, attempts
/// fail at once rather than start more threads.
fn resolve(
    host: &str,
    port: u16,
    deadline: Option<Instant>,
    running: &Arc<AtomicBool>,
) -> Result<Vec<SocketAddr>, Error> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    if running.swap(true, Ordering::SeqCst) {
        return Err(Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("an earlier lookup of {host} has not finished"),
        )));
    }
    let (tx, rx) = crossbeam_channel::bounded(1);
    let name = host.to_owned();
    let done = running.clone();
    let spawned = thread::Builder::new()
        .name("wsrpc-client-dns".into())
        .spawn(move || {
            let found = (name.as_str(), port)
                .to_socket_addrs()
                .map(|addrs| addrs.collect::<Vec<_>>());
            done.store(false, Ordering::SeqCst);
            let _ = tx.send(found);
        });
    if let Err(e) = spawned {
        running.store(false, Ordering::SeqCst);
        return Err(Error::Io(e));
    }
    let found = match deadline {
        Some(deadline) => rx.recv_deadline(deadline).map_err(|e| match e {
            RecvTimeoutError::Timeout => Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("looking up {host} timed out"),
            )),
            RecvTimeoutError::Disconnected => Error::Protocol("the lookup failed".into()),
        })?,
        None => rx
            .recv()
            .map_err(|_| Error::Protocol("the lookup failed".into()))?,
    };
    Ok(found?)
}

#[cfg(feature = "tls")]
fn secure_socket(inner: &Inner, stream: TcpStream, host: &str) -> Result<Socket, Error> {
    let config = match &inner.options.tls {
        Some(config) => config.clone(),
        None => crate::tls::default_client_config()?,
    };
    let tls = crate::tls::TlsSocket::client(stream, config, host)?;
    Ok(Socket::Tls(Box::new(tls)))
}

#[cfg(not(feature = "tls"))]
fn secure_socket(_: &Inner, _: TcpStream, _: &str) -> Result<Socket, Error> {
    Err(Error::InvalidUrl(
        "wss:// needs wsrpc's `tls` feature".into(),
    ))
}

/// The I/O thread's life: wait, connect, read until the connection drops, decide
/// whether and when to try again, repeat.
pub(super) fn run(inner: Arc<Inner>, control: Receiver<Control>, autoconnect: bool) {
    let policy = inner.options.policy;
    let mut next_attempt = autoconnect.then(Instant::now);
    inner.set_reconnecting(next_attempt.is_some());
    // Which retry the next attempt is (0: not a retry).
    let mut retry: u32 = 0;
    let mut ever_connected = false;
    // The last close's on_close: it has its say (it may stop retries) before we retry.
    let mut last_close: Option<(Receiver<()>, Arc<AtomicBool>)> = None;
    loop {
        let wait = match next_attempt {
            None => control.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(at) => control.recv_deadline(at),
        };
        let mut asked = match wait {
            // An `open` that an earlier attempt answered: keep the schedule.
            Ok(Control::Open) if inner.state().waiting.is_empty() => continue,
            Ok(Control::Open) => true,
            Err(RecvTimeoutError::Timeout) => false,
            Ok(Control::Close) | Err(RecvTimeoutError::Disconnected) => break,
        };
        if let Some((done, stop)) = last_close.take() {
            // Wait for on_close to return, but not past a `close` or `open` it makes
            // itself: those wait for this thread.
            if !asked {
                crossbeam_channel::select! {
                    recv(done) -> _ => {}
                    recv(control) -> msg => match msg {
                        Ok(Control::Open) => asked = true,
                        Ok(Control::Close) | Err(_) => break,
                    },
                }
            }
            if stop.load(Ordering::SeqCst) && !asked {
                next_attempt = None;
                inner.set_reconnecting(false);
                continue;
            }
        }
        if inner.closed.load(Ordering::SeqCst) {
            break;
        }
        if inner.state().sink.is_some() {
            continue;
        }
        inner.set_reconnecting(true);
        let (kind, code, reason, retries, delay) = match connect_once(&inner) {
            Ok((reader, sink, resumed)) => {
                ever_connected = true;
                retry = 0;
                let Some(generation) = install(&inner, &sink, resumed) else {
                    break;
                };
                let (code, reason) = read_until_closed(&inner, reader, &sink);
                lost(&inner, &sink, generation);
                let clean = inner.closed.load(Ordering::SeqCst) || code == 1000;
                if clean {
                    (CloseKind::Closed, code, reason, 0, None)
                } else {
                    retry = 1;
                    (
                        CloseKind::Lost,
                        code,
                        reason,
                        0,
                        policy.delay(1, random_unit()),
                    )
                }
            }
            Err(e) => {
                let waiting = std::mem::take(&mut inner.state().waiting);
                for waiter in waiting {
                    let _ = waiter.send(Err(e.duplicate()));
                }
                let reason = e.to_string();
                inner.queue_report(e);
                let made = retry;
                let may_retry = ever_connected || policy.retry_if_unreachable;
                let delay = may_retry
                    .then(|| policy.delay(made + 1, random_unit()))
                    .flatten();
                retry = made + 1;
                (CloseKind::Unreachable, 1006, reason, made, delay)
            }
        };
        let delay = delay.filter(|_| !inner.closed.load(Ordering::SeqCst));
        last_close = Some(report_close(&inner, kind, code, reason, retries, delay));
        // A delay too long to add to now is never over: no retry.
        next_attempt = delay.and_then(deadline_after);
        inner.set_reconnecting(next_attempt.is_some());
        if inner.closed.load(Ordering::SeqCst) {
            break;
        }
    }
    let waiting = {
        let mut state = inner.state();
        state.stopped = true;
        state.reconnecting = false;
        std::mem::take(&mut state.waiting)
    };
    inner.state_changed.notify_all();
    for waiter in waiting {
        let _ = waiter.send(Err(Error::Closed));
    }
}

/// Make a new connection current; `None` if the client was closed meanwhile. It is
/// ready at once unless login or subscriptions need restoring first (a resumed
/// session has them already).
fn install(inner: &Arc<Inner>, sink: &Arc<Sink>, resumed: bool) -> Option<u64> {
    let restore = !resumed && inner.needs_restore();
    let generation = {
        let mut state = inner.state();
        if inner.closed.load(Ordering::SeqCst) {
            drop(state);
            let _ = sink.close(1000, "");
            sink.shutdown();
            return None;
        }
        state.generation += 1;
        state.sink = Some(sink.clone());
        state.generation
    };
    if restore {
        restore_then_open(inner, generation);
    } else {
        inner.mark_ready(generation);
        if inner.hooks.open.is_some() {
            inner.queue_lifecycle(Job::Opened {
                generation,
                restore: false,
            });
        }
    }
    Some(generation)
}

/// Tell `on_close` (once for this close); returns what to wait on before a retry.
fn report_close(
    inner: &Inner,
    kind: CloseKind,
    code: u16,
    reason: String,
    retries: u32,
    next_delay: Option<Duration>,
) -> (Receiver<()>, Arc<AtomicBool>) {
    let (done_tx, done_rx) = crossbeam_channel::bounded(0);
    let stop = Arc::new(AtomicBool::new(false));
    let info = CloseInfo {
        kind,
        code,
        reason,
        retries,
        next_delay,
        reconnecting: next_delay.is_some(),
        stop: stop.clone(),
    };
    log::debug!("connection closed: {info:?}");
    // Without an on_close there is nothing to wait for (and a retry must not wait
    // behind event callbacks queued before it).
    if inner.hooks.close.is_some() {
        inner.queue_lifecycle(Job::Closed(info, done_tx));
    }
    (done_rx, stop)
}

/// The connection is gone: forget it and fail every call still waiting on it.
fn lost(inner: &Inner, sink: &Sink, generation: u64) {
    sink.shutdown();
    let pending = {
        let mut state = inner.state();
        if state.generation == generation {
            state.sink = None;
            state.ready = false;
        }
        std::mem::take(&mut state.pending)
    };
    inner.state_changed.notify_all();
    let closed = inner.closed.load(Ordering::SeqCst);
    for (_, waiter) in pending {
        let _ = waiter.send(Err(if closed {
            Error::Closed
        } else {
            Error::ConnectionLost
        }));
    }
}

fn read_until_closed(inner: &Inner, mut reader: Reader, sink: &Sink) -> (u16, String) {
    let heartbeat = inner.options.heartbeat;
    let mut peer_close = None;
    loop {
        match reader.read() {
            Ok(Message::Text(text)) => deliver(inner, Codec::Json, text.as_bytes()),
            Ok(Message::Binary(bytes)) => deliver(inner, Codec::of_frame(true, &bytes), &bytes),
            Ok(Message::Close(frame)) => {
                sink.peer_closed();
                peer_close = Some(close_info(frame.as_ref()));
            }
            Ok(_) => {}
            // The read timeout is the heartbeat's tick.
            Err(e) if is_timeout(&e) => {
                if reader.get_mut().idle(&heartbeat) == Idle::Dead {
                    log::debug!("the server timed out");
                    return (1006, "server timed out".to_owned());
                }
            }
            Err(e) => {
                log::debug!("connection ended: {e}");
                return peer_close.unwrap_or((1006, String::new()));
            }
        }
    }
}

fn deliver(inner: &Inner, codec: Codec, frame: &[u8]) {
    let messages = match codec.decode_server_message(frame) {
        Ok(messages) => messages,
        Err(e) => {
            inner.queue_event(Job::Error(Error::Codec(ErrorDetail::text(format!(
                "unreadable frame from the server: {e}"
            )))));
            return;
        }
    };
    for message in messages {
        match message {
            ServerMessage::Reply { id, outcome } => {
                let Some(id) = id.as_ref().and_then(numeric_id) else {
                    continue;
                };
                let waiter = lock(&inner.state).pending.remove(&id);
                if let Some(waiter) = waiter {
                    let _ = waiter.send(outcome.map_err(Error::Rpc));
                }
            }
            ServerMessage::Event { name, params } => {
                let callbacks = lock(&inner.subscriptions).get(&name).cloned();
                if let Some(callbacks) = callbacks {
                    inner.queue_event(Job::Event(callbacks, params));
                }
            }
        }
    }
}

fn numeric_id(id: &Id) -> Option<u64> {
    match id {
        Id::Number(n) => n.as_u64(),
        Id::Str(_) => None,
    }
}

/// Give the server a moment to answer our close frame, then cut the connection.
pub(super) fn await_close(sink: &Sink, done: &Receiver<()>) {
    if let Err(RecvTimeoutError::Timeout) = done.recv_timeout(Duration::from_secs(1)) {
        sink.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_ids_are_encoded_into_the_query() {
        let t = Target::new("ws://h:1/chat", &[("socket_id", "a b/c")], &[]);
        assert_eq!(t.url, "ws://h:1/chat?socket_id=a%20b%2Fc");
        let t = Target::new("ws://h:1/?x=1", &[("socket_id", "id")], &[]);
        assert_eq!(t.url, "ws://h:1/?x=1&socket_id=id");
        let t = Target::new(
            "ws://h:1",
            &[("socket_id", "id"), ("encoding", "msgpack")],
            &[],
        );
        assert_eq!(t.url, "ws://h:1/?socket_id=id&encoding=msgpack");
        let t = Target::new("ws://h:1?x=1", &[], &[]);
        assert_eq!(t.url, "ws://h:1/?x=1");
    }
}
