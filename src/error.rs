//! Errors: [`RpcError`] is what a handler or a server reply carries on the wire,
//! [`Error`] is what the library's own calls return.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A JSON-RPC error object: `{"code": …, "message": …, "data": …}`.
///
/// Handlers return it to choose the error a caller sees; the client hands it back
/// unchanged inside [`Error::Rpc`].
///
/// Any `std::error::Error` converts into it with `?`: the error becomes code
/// `-32000`, message `"Error"` and its text the data, as rpc-websockets sends a thrown
/// `Error` (the same as [`RpcError::server`]). No Rust type name goes on the wire.
///
/// ```
/// use wsrpc::RpcError;
/// let e = RpcError::new(-32050, "Server error").with_data("details");
/// assert_eq!(e.code, -32050);
/// let parsed: Result<i32, RpcError> = "x".parse::<i32>().map_err(RpcError::from);
/// let e = parsed.unwrap_err();
/// assert_eq!((e.code, e.message.as_str()), (-32000, "Error"));
/// assert_eq!(e.data, Some("invalid digit found in string".into()));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RpcError {
    /// The error code; the JSON-RPC reserved range is -32768 to -32000.
    pub code: i64,
    /// A short description.
    pub message: String,
    /// Anything else the server wants the caller to have; absent when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl RpcError {
    /// An error with a code and a message and no data.
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
            data: None,
        }
    }

    /// The same error carrying `data` (anything serde can serialize to JSON).
    pub fn with_data(mut self, data: impl Serialize) -> Self {
        self.data = serde_json::to_value(data).ok().filter(|v| !v.is_null());
        self
    }

    /// One of the protocol's own errors, with its standard message.
    pub(crate) fn standard(code: i64) -> Self {
        let message = match code {
            codes::EVENT_NOT_PROVIDED => "Event not provided",
            codes::INVALID_REQUEST => "Invalid Request",
            codes::METHOD_NOT_FOUND => "Method not found",
            codes::INVALID_PARAMS => "Invalid params",
            codes::INTERNAL_ERROR => "Internal error",
            codes::PARAMS_NOT_FOUND => "Params not found",
            codes::METHOD_FORBIDDEN => "Method forbidden",
            codes::EVENT_FORBIDDEN => "Event forbidden",
            codes::PARSE_ERROR => "Parse error",
            _ => "Internal Server Error",
        };
        RpcError::new(code, message)
    }

    /// A handler's failure described by a text alone: code `-32000`, message `"Error"`
    /// and the text as data, as rpc-websockets sends `throw new Error(text)`.
    ///
    /// ```
    /// let e = wsrpc::RpcError::server("no such user");
    /// assert_eq!((e.code, e.message.as_str()), (-32000, "Error"));
    /// ```
    pub fn server(text: impl Into<String>) -> Self {
        RpcError::new(codes::SERVER_ERROR, "Error").with_data(text.into())
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code)?;
        if let Some(data) = &self.data {
            match data {
                Value::String(s) => write!(f, ": {s}")?,
                other => write!(f, ": {other}")?,
            }
        }
        Ok(())
    }
}

impl<E: std::error::Error> From<E> for RpcError {
    fn from(err: E) -> Self {
        RpcError::server(err.to_string())
    }
}

/// The error codes the protocol itself uses (see `PROTOCOL.md`).
pub mod codes {
    /// The frame is not valid JSON (or MessagePack).
    pub const PARSE_ERROR: i64 = -32700;
    /// The message is not a valid request.
    pub const INVALID_REQUEST: i64 = -32600;
    /// No such method in the namespace.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// The params do not fit the method.
    pub const INVALID_PARAMS: i64 = -32602;
    /// The handler panicked.
    pub const INTERNAL_ERROR: i64 = -32603;
    /// `rpc.login` without params.
    pub const PARAMS_NOT_FOUND: i64 = -32604;
    /// A protected method called before logging in.
    pub const METHOD_FORBIDDEN: i64 = -32605;
    /// A protected event subscribed to before logging in.
    pub const EVENT_FORBIDDEN: i64 = -32606;
    /// `rpc.on` / `rpc.off` without params (rpc-websockets' "Event not provided").
    pub const EVENT_NOT_PROVIDED: i64 = -32000;
    /// A handler failed without choosing a code.
    pub const SERVER_ERROR: i64 = -32000;
}

/// The text of a codec or protocol error, and the error underneath it if there was one
/// (a `serde_json`, `rmp-serde` or `tungstenite` error), which
/// [`source`](std::error::Error::source) returns.
///
/// ```
/// use std::error::Error as _;
/// let e = wsrpc::Client::connect("ws://127.0.0.1:1/").unwrap_err();
/// // A refused TCP connection: an I/O error, kept as the source.
/// assert!(e.source().is_some());
/// ```
#[derive(Clone)]
pub struct ErrorDetail {
    text: String,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl ErrorDetail {
    /// A description with nothing underneath it.
    pub(crate) fn text(text: impl Into<String>) -> Self {
        ErrorDetail {
            text: text.into(),
            source: None,
        }
    }

    /// `source`'s text, with `source` kept underneath.
    pub(crate) fn of(source: impl std::error::Error + Send + Sync + 'static) -> Self {
        ErrorDetail {
            text: source.to_string(),
            source: Some(Arc::new(source)),
        }
    }

    /// `context`, then `source`'s text, with `source` kept underneath.
    pub(crate) fn with(
        context: impl fmt::Display,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        ErrorDetail {
            text: format!("{context}: {source}"),
            source: Some(Arc::new(source)),
        }
    }

    /// The description.
    pub fn message(&self) -> &str {
        &self.text
    }
}

impl From<String> for ErrorDetail {
    fn from(text: String) -> Self {
        ErrorDetail::text(text)
    }
}

impl From<&str> for ErrorDetail {
    fn from(text: &str) -> Self {
        ErrorDetail::text(text)
    }
}

impl fmt::Display for ErrorDetail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for ErrorDetail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(source) => write!(f, "{:?} (source: {source:?})", self.text),
            None => write!(f, "{:?}", self.text),
        }
    }
}

impl PartialEq<str> for ErrorDetail {
    fn eq(&self, other: &str) -> bool {
        self.text == other
    }
}

/// What went wrong in a call to this library.
///
/// [`source`](std::error::Error::source) gives the underlying I/O, codec or WebSocket
/// error where there is one; [`http_status`](Error::http_status) the HTTP status of a
/// refused handshake.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The server answered with a JSON-RPC error; code, message and data are kept.
    Rpc(RpcError),
    /// No reply came within the call's timeout.
    Timeout,
    /// The client has no open connection right now (it may be reconnecting).
    NotConnected,
    /// The connection dropped while the call waited for its reply.
    ConnectionLost,
    /// The client or server was closed by its owner.
    Closed,
    /// The server refused to subscribe to `event`; `reason` is its word for it
    /// (for example `"provided event invalid"`).
    Subscribe {
        /// The event's name.
        event: String,
        /// What the server answered for it.
        reason: String,
    },
    /// `login` was answered with something other than `true`.
    AuthFailed,
    /// The address or URL could not be used.
    InvalidUrl(String),
    /// Params or a result could not be encoded or decoded.
    Codec(ErrorDetail),
    /// The WebSocket handshake or protocol failed.
    Protocol(ErrorDetail),
    /// A socket error.
    Io(std::io::Error),
    /// The server answered the WebSocket handshake with an HTTP error instead of
    /// upgrading: 403 (origin or access refused), 404 (no such namespace), 429 (too many
    /// connections from this address), 503 (full or shutting down), ...
    #[non_exhaustive]
    Refused {
        /// The HTTP status code.
        status: u16,
    },
    /// The client's callback queue was full: `dropped` events (counted since the last
    /// such report) were thrown away instead of waiting for the callback thread. Given
    /// to `on_error` once the callback thread has caught up.
    #[non_exhaustive]
    EventsDropped {
        /// How many events were dropped.
        dropped: u64,
    },
}

impl Error {
    /// The HTTP status of a refused handshake ([`Error::Refused`]); `None` for every
    /// other error.
    ///
    /// ```no_run
    /// match wsrpc::Client::connect("ws://127.0.0.1:8080/nowhere") {
    ///     Err(e) if e.http_status() == Some(404) => eprintln!("no such namespace"),
    ///     Err(e) => eprintln!("{e}"),
    ///     Ok(_) => {}
    /// }
    /// ```
    pub fn http_status(&self) -> Option<u16> {
        match self {
            Error::Refused { status } => Some(*status),
            _ => None,
        }
    }

    /// A codec error keeping `source`.
    pub(crate) fn codec(source: impl std::error::Error + Send + Sync + 'static) -> Error {
        Error::Codec(ErrorDetail::of(source))
    }

    /// A protocol error keeping `source` (TLS failures, so far).
    #[cfg(feature = "tls")]
    pub(crate) fn protocol(source: impl std::error::Error + Send + Sync + 'static) -> Error {
        Error::Protocol(ErrorDetail::of(source))
    }

    /// An equal error for a second receiver (`io::Error` cannot be cloned: its kind and
    /// text are kept).
    pub(crate) fn duplicate(&self) -> Error {
        match self {
            Error::Rpc(e) => Error::Rpc(e.clone()),
            Error::Timeout => Error::Timeout,
            Error::NotConnected => Error::NotConnected,
            Error::ConnectionLost => Error::ConnectionLost,
            Error::Closed => Error::Closed,
            Error::Subscribe { event, reason } => Error::Subscribe {
                event: event.clone(),
                reason: reason.clone(),
            },
            Error::AuthFailed => Error::AuthFailed,
            Error::InvalidUrl(s) => Error::InvalidUrl(s.clone()),
            Error::Codec(s) => Error::Codec(s.clone()),
            Error::Protocol(s) => Error::Protocol(s.clone()),
            Error::Io(e) => Error::Io(std::io::Error::new(e.kind(), e.to_string())),
            Error::Refused { status } => Error::Refused { status: *status },
            Error::EventsDropped { dropped } => Error::EventsDropped { dropped: *dropped },
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Rpc(e) => write!(f, "server error: {e}"),
            Error::Timeout => f.write_str("no reply within the timeout"),
            Error::NotConnected => f.write_str("not connected"),
            Error::ConnectionLost => f.write_str("connection lost before the reply came"),
            Error::Closed => f.write_str("closed"),
            Error::Subscribe { event, reason } => {
                write!(f, "could not subscribe to '{event}': {reason}")
            }
            Error::AuthFailed => f.write_str("authentication failed"),
            Error::InvalidUrl(s) => write!(f, "invalid address: {s}"),
            Error::Codec(s) => write!(f, "encoding error: {s}"),
            Error::Protocol(s) => write!(f, "websocket error: {s}"),
            Error::Io(e) => write!(f, "i/o error: {e}"),
            Error::Refused { status } => {
                write!(f, "the server refused the handshake with HTTP {status}")
            }
            Error::EventsDropped { dropped } => {
                write!(f, "{dropped} events dropped: the callback queue was full")
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            Error::Codec(d) | Error::Protocol(d) => d
                .source
                .as_deref()
                .map(|s| s as &(dyn std::error::Error + 'static)),
            _ => None,
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}

impl From<tungstenite::Error> for Error {
    fn from(e: tungstenite::Error) -> Self {
        match e {
            tungstenite::Error::Io(io) => Error::Io(io),
            tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
                Error::ConnectionLost
            }
            tungstenite::Error::Url(u) => Error::InvalidUrl(u.to_string()),
            tungstenite::Error::Http(response) => Error::Refused {
                status: response.status().as_u16(),
            },
            other => Error::Protocol(ErrorDetail::of(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn std_errors_become_server_errors_without_a_type_name() {
        let e: RpcError = "abc".parse::<u8>().unwrap_err().into();
        assert_eq!(e.code, -32000);
        assert_eq!(e.message, "Error");
        assert_eq!(e, RpcError::server("invalid digit found in string"));
        assert_eq!(e.data, Some(Value::from("invalid digit found in string")));
    }

    #[test]
    fn text_errors_become_server_errors() {
        let e = RpcError::server("no such user");
        assert_eq!((e.code, e.message.as_str()), (-32000, "Error"));
        assert_eq!(e.data, Some(Value::from("no such user")));
    }

    #[test]
    fn codec_and_protocol_errors_keep_their_source() {
        use std::error::Error as _;
        let json = serde_json::from_str::<u8>("x").unwrap_err();
        let e = Error::codec(json);
        let source = e.source().expect("the serde_json error is kept");
        assert!(source.downcast_ref::<serde_json::Error>().is_some());
        assert!(e.duplicate().source().is_some());
        let ws = Error::from(tungstenite::Error::Utf8("bad".into()));
        let source = ws.source().expect("the tungstenite error is kept");
        assert!(source.downcast_ref::<tungstenite::Error>().is_some());
        let io = Error::from(tungstenite::Error::Io(std::io::ErrorKind::TimedOut.into()));
        assert!(
            io.source()
                .unwrap()
                .downcast_ref::<std::io::Error>()
                .is_some()
        );
        assert!(Error::Protocol("text only".into()).source().is_none());
    }

    #[test]
    fn a_refused_handshake_keeps_its_http_status() {
        for status in [403u16, 404, 429, 503] {
            let response = tungstenite::http::Response::builder()
                .status(status)
                .body(None)
                .unwrap();
            let e = Error::from(tungstenite::Error::Http(Box::new(response)));
            assert_eq!(e.http_status(), Some(status), "{e:?}");
            assert!(e.to_string().contains(&status.to_string()), "{e}");
        }
        assert_eq!(Error::Timeout.http_status(), None);
    }

    #[test]
    fn data_is_omitted_when_absent() {
        let json = serde_json::to_string(&RpcError::standard(codes::METHOD_NOT_FOUND)).unwrap();
        assert_eq!(json, r#"{"code":-32601,"message":"Method not found"}"#);
    }
}
