//! The client's I/O thread: connects, reads replies and events, and reconnects after a
//! drop on the fixed interval of its [`ReconnectPolicy`](super::reconnect::ReconnectPolicy).

use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::client::Request;
use tungstenite::http::HeaderValue;
use tungstenite::http::header::HeaderName;
use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::{Message, WebSocket};

use super::{CloseInfo, Inner, Job};
use crate::error::Error;
use crate::lock;
use crate::protocol::{Codec, Id, ServerMessage};
use crate::transport::{ConnStream, Sink, close_info};

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

    fn request(&self) -> Result<Request, Error> {
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

fn connect_once(inner: &Inner) -> Result<(Reader, Arc<Sink>), Error> {
    let request = inner.target.request()?;
    let uri = request.uri();
    match uri.scheme_str() {
        Some("ws") => {}
        Some("wss") => {
            return Err(Error::InvalidUrl(
                "wss:// needs TLS, which this build lacks".into(),
            ));
        }
        _ => {
            return Err(Error::InvalidUrl(format!(
                "{uri}: the scheme must be ws://"
            )));
        }
    }
    let host = uri
        .host()
        .unwrap_or("")
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(80);
    let mut last_error = Error::InvalidUrl(format!("{host}: no address"));
    let mut stream = None;
    for addr in (host, port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, inner.timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_error = Error::Io(e),
        }
    }
    let stream = stream.ok_or(last_error)?;
    stream.set_nodelay(true)?;
    // A send blocked on a server that does not read fails instead of hanging.
    stream.set_write_timeout(Some(inner.timeout))?;
    let config = WebSocketConfig::default().read_buffer_size(16 << 10);
    let sink = Arc::new(Sink::new(stream, Role::Client, config));
    {
        // Visible to `close`, which cuts the attempt short.
        let mut state = lock(&inner.state);
        if inner.closed.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        state.connecting = Some(sink.clone());
    }
    let stream = ConnStream::handshaking(sink.clone(), Instant::now() + inner.timeout);
    let handshake = tungstenite::client::client_with_config(request, stream, Some(config));
    lock(&inner.state).connecting = None;
    let (mut reader, _response) = handshake.map_err(|e| match e {
        tungstenite::HandshakeError::Failure(e) => Error::from(e),
        tungstenite::HandshakeError::Interrupted(_) => {
            Error::Protocol("the handshake timed out".into())
        }
    })?;
    reader.get_mut().opened()?;
    Ok((reader, sink))
}

/// The I/O thread's life: wait, connect, read until the connection drops, repeat.
pub(super) fn run(inner: Arc<Inner>, control: Receiver<Control>, autoconnect: bool) {
    let mut next_attempt = autoconnect.then(Instant::now);
    let mut retries: u32 = 0;
    loop {
        let wait = match next_attempt {
            None => control.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(at) => control.recv_deadline(at),
        };
        match wait {
            // An `open` that was answered by an earlier attempt: keep the schedule.
            Ok(Control::Open) if lock(&inner.state).waiting.is_empty() => continue,
            Ok(Control::Open) | Err(RecvTimeoutError::Timeout) => {}
            Ok(Control::Close) | Err(RecvTimeoutError::Disconnected) => break,
        }
        if inner.closed.load(Ordering::SeqCst) {
            break;
        }
        if lock(&inner.state).sink.is_some() {
            continue;
        }
        let (code, reason) = match connect_once(&inner) {
            Ok((reader, sink)) => {
                retries = 0;
                let waiting = {
                    let mut state = lock(&inner.state);
                    if inner.closed.load(Ordering::SeqCst) {
                        // Closed while connecting: this connection is not wanted.
                        let _ = sink.close(1000, "");
                        sink.shutdown();
                        break;
                    }
                    state.sink = Some(sink.clone());
                    std::mem::take(&mut state.waiting)
                };
                for waiter in waiting {
                    let _ = waiter.send(Ok(()));
                }
                let _ = inner.jobs.send(Job::Opened { restore: true });
                let ended = read_until_closed(&inner, reader, &sink);
                lost(&inner, &sink);
                ended
            }
            Err(e) => {
                let waiting = std::mem::take(&mut lock(&inner.state).waiting);
                for waiter in waiting {
                    let _ = waiter.send(Err(e.duplicate()));
                }
                let _ = inner.jobs.send(Job::Error(e));
                next_attempt = schedule(&inner, &mut retries, 1006);
                continue;
            }
        };
        if inner.closed.load(Ordering::SeqCst) {
            let _ = inner.jobs.send(Job::Closed(CloseInfo {
                code,
                reason,
                reconnecting: false,
            }));
            break;
        }
        next_attempt = schedule(&inner, &mut retries, code);
        let _ = inner.jobs.send(Job::Closed(CloseInfo {
            code,
            reason,
            reconnecting: next_attempt.is_some(),
        }));
    }
    let waiting = {
        let mut state = lock(&inner.state);
        state.stopped = true;
        std::mem::take(&mut state.waiting)
    };
    for waiter in waiting {
        let _ = waiter.send(Err(Error::Closed));
    }
}

/// When to try again after a close with `code`; a normal close (1000) is final.
fn schedule(inner: &Inner, retries: &mut u32, code: u16) -> Option<Instant> {
    if code == 1000 {
        return None;
    }
    *retries += 1;
    inner.policy.delay(*retries).map(|d| Instant::now() + d)
}

/// The connection is gone: forget it and fail every call still waiting on it.
fn lost(inner: &Inner, sink: &Sink) {
    sink.shutdown();
    let pending = {
        let mut state = lock(&inner.state);
        state.sink = None;
        std::mem::take(&mut state.pending)
    };
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
            let _ = inner.jobs.send(Job::Error(Error::Codec(format!(
                "unreadable frame from the server: {e}"
            ))));
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
                    let _ = inner.jobs.send(Job::Event(callbacks, params));
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
