//! # wsrpc
//!
//! JSON-RPC 2.0 and publish/subscribe over WebSockets, wire-compatible with the npm
//! package [`rpc-websockets`](https://www.npmjs.com/package/rpc-websockets) 10, built on
//! blocking sockets and threads: no async runtime.
//!
//! * [`Server`]: methods with typed params, structured errors, events, namespaces
//!   chosen by URL path, login with protected methods and events, lifecycle callbacks.
//! * [`Client`]: blocking calls with timeouts, notifications, subscriptions with
//!   callbacks, login, and reconnection. It is `Send + Sync`: share it between threads.
//! * Two codecs per connection: JSON in text frames, and the same messages as
//!   MessagePack in binary frames ([`ClientBuilder::msgpack`]; a server serves both).
//!
//! ```
//! use wsrpc::{Client, RpcError, Server};
//!
//! let server = Server::bind("127.0.0.1:0")?;
//! server.register("sum", |nums: Vec<f64>, _ctx| Ok::<_, RpcError>(nums.iter().sum::<f64>()));
//! server.event("feed");
//!
//! let client = Client::connect(&format!("ws://{}", server.local_addr()))?;
//! let sum: f64 = client.call_as("sum", [5, 3])?;
//! assert_eq!(sum, 8.0);
//! client.subscribe("feed", |params| println!("feed: {params}"))?;
//! server.emit("feed", serde_json::json!({"price": 42}))?;
//!
//! client.close();
//! server.close();
//! # Ok::<(), wsrpc::Error>(())
//! ```
//!
//! ## Errors
//! Handlers return `Result<T, RpcError>`; any `std::error::Error` converts with `?`
//! (code -32000, message `"Error"`, its text as data, as rpc-websockets does for a
//! thrown `Error`). The client returns [`Error`], whose [`Error::Rpc`] keeps the
//! server's code, message and data, and whose [`Error::Refused`] keeps the HTTP status of
//! a refused handshake.
//!
//! ## Threads and limits
//! The server reads each connection on its own thread and answers calls there; one
//! dispatcher thread owns subscriptions and fans events out, writing each event into
//! every subscriber's socket without waiting (over plain TCP on Unix); a client whose
//! socket is full (or a TLS client) gets a bounded queue, drained by a pool of writer
//! threads, so a slow client is cut off instead of holding anyone up. A handler that runs long does not delay the next requests of
//! its connection: after [`ServerConfig::slow_call_threshold`] another thread takes over
//! reading them. Every such thread, queue and buffer has a bound in [`ServerConfig`],
//! with defaults meant for a server on the internet, and a counter in [`Stats`].
//! [`Server::close`] returns within a deadline whatever handlers do.
//!
//! The wire protocol, for anyone writing a client or debugging a connection, and where
//! wsrpc deliberately differs from rpc-websockets, is in `docs/PROTOCOL.md`, part of the
//! crate's sources.

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![deny(missing_debug_implementations)]
// docs.rs builds with `--cfg docsrs` on nightly: items of the `tls` feature are marked.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod client;
mod error;
mod log_limit;
mod protocol;
mod server;
mod sink;
mod socket;
#[cfg(feature = "tls")]
mod tls;
mod transport;

pub use client::{Client, ClientBuilder, CloseInfo, CloseKind};
pub use error::{Error, ErrorDetail, RpcError, codes};
pub use server::{
    ConnectionInfo, Context, DisconnectInfo, EventHandle, MethodHandle, Namespace, Server,
    ServerBuilder, ServerConfig, Stats,
};

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Lock a mutex, going on after a panic elsewhere: every value these mutexes guard stays
/// consistent between statements, and a panicking handler must not take a connection or
/// the server down with it.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The instant `after` from now, or about a century away if that is past what an
/// `Instant` can hold: a user's `Duration::MAX` means "never", not a panic.
pub(crate) fn deadline(after: std::time::Duration) -> std::time::Instant {
    const CENTURY: std::time::Duration = std::time::Duration::from_secs(100 * 365 * 86_400);
    let now = std::time::Instant::now();
    now.checked_add(after)
        .or_else(|| now.checked_add(CENTURY))
        .unwrap_or(now)
}

/// Entry points of the fuzz targets in `fuzz/`; compiled only under `cargo fuzz`.
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing {
    use crate::protocol::{Codec, Incoming};

    /// Decode `data` as JSON requests, as a connection would, and read every params.
    pub fn json_requests(data: &[u8]) {
        requests(Codec::Json, data);
    }

    /// Decode `data` as MessagePack requests, as a connection would, and read every
    /// params; also convert it to JSON, strictly and leniently.
    pub fn msgpack_requests(data: &[u8]) {
        requests(Codec::MsgPack, data);
        let _ = crate::protocol::msgpack::to_json(data, true);
        let _ = crate::protocol::msgpack::to_json(data, false);
    }

    fn requests(codec: Codec, data: &[u8]) {
        let items = match codec.decode_requests(data, 1000) {
            Incoming::Single(item) => vec![item],
            Incoming::Batch(items) => items,
            Incoming::Refused(_) => Vec::new(),
        };
        for call in items.into_iter().flatten() {
            crate::protocol::check_typed_decoding(call.params);
            let _ = call.params.allowing_raw().parse::<(Vec<u8>,)>();
        }
        let _ = codec.decode_server_message(data);
    }

    /// Run `data` through the request dispatcher in both codecs, against a namespace
    /// with methods, a protected method, login and events.
    pub fn dispatch(data: &[u8]) {
        crate::server::fuzz::dispatch(data);
    }
}

/// The README's examples, compiled as doc tests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
