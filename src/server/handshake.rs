//! The WebSocket handshake of a new connection: the request's path, query and headers,
//! the refusals (unknown namespace, origin), the codec and session it declares, and
//! the [`Conn`] it opens, within `handshake_timeout`.

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Instant;

use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::protocol::Role;

use super::Server;
use super::admission::Counters;
use super::calls::Session;
use super::config::{ConnectionInfo, query_param};
use super::connection::{Conn, Reader};
use super::dispatcher::Command;
use super::resume::{Claimed, RESUME_HEADER, RESUMED_HEADER, SESSION_HEADER, new_token};
use crate::error::Error;
use crate::protocol::Codec;
use crate::transport::{ConnStream, Sink};

/// The WebSocket handshake, within `handshake_timeout`.
pub(super) fn open(
    server: &Server,
    key: u64,
    stream: TcpStream,
) -> Option<(Arc<Conn>, Reader, ConnectionInfo)> {
    let peer_addr = stream.peer_addr().ok();
    let config = server.config().clone();
    let _ = stream.set_nodelay(true);
    let deadline = Instant::now() + config.handshake_timeout;
    let socket = match server.socket(stream) {
        Ok(socket) => socket,
        Err(e) => {
            log::warn!("{e}");
            return None;
        }
    };
    let sink = Arc::new(Sink::new(socket, Role::Server, config.websocket()));
    let mut info = None;
    let mut declared = None;
    let mut session = None;
    // A Cell: the failed handshake still holds the callback that set it.
    let refused = Cell::new(false);
    // tungstenite's callback type fixes the (large) error response type.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, mut response: Response| {
        let mut found = request_info(request, peer_addr);
        let refused_namespace = server.config().refuse_unknown_namespaces
            && (server.registry().namespace(&found.namespace)).is_none_or(|t| t.is_empty());
        if refused_namespace {
            refused.set(true);
            return Err(http_error(404, "no such namespace"));
        }
        if let Some(allowed) = &server.config().allowed_origins
            && let Some(origin) = found.header("origin")
            && !allowed.iter().any(|a| a == origin)
        {
            Counters::count(&server.counters().refused_origin);
            refused.set(true);
            log::warn!("refused a connection from origin {origin}");
            return Err(http_error(403, "origin not allowed"));
        }
        declared = declared_codec(request, &found, &mut response);
        if server.config().session_ttl.is_some() {
            session = Some(open_session(server, request, &mut found, &mut response));
        }
        info = Some(found);
        Ok(response)
    };
    let handshake = tungstenite::accept_hdr_with_config(
        ConnStream::handshaking(sink.clone(), deadline),
        callback,
        Some(config.websocket()),
    );
    let mut reader = match handshake {
        Ok(reader) => reader,
        Err(e) => {
            if !refused.get() {
                Counters::count(&server.counters().handshakes_failed);
            }
            let e = Error::Protocol(format!("handshake with {peer_addr:?} failed: {e}").into());
            log::debug!("{e}");
            server.hooks().error(&e);
            if let Some((token, Some(_))) = session {
                server.dispatch(Command::Unclaim(token));
            }
            return None;
        }
    };
    let info = info?;
    if reader.get_mut().opened(&config.heartbeat()).is_err() {
        if let Some((token, Some(_))) = session {
            server.dispatch(Command::Unclaim(token));
        }
        return None;
    }
    let mut state = Session::new(key, info.socket_id.clone(), info.namespace.clone());
    let mut resumes = None;
    if let Some((token, claimed)) = session {
        if let Some(claimed) = claimed {
            // Its missed events are in the session's codec; keep it unless declared.
            declared = declared.or(Some(claimed.codec));
            state.restore(claimed.logged_in, &claimed.subscriptions);
            resumes = Some(token.clone());
        }
        state.token = Some(token);
    }
    let mut conn = Conn::new(state, sink, config.outgoing_queue, declared);
    conn.resumes = resumes;
    Some((Arc::new(conn), Box::new(reader), info))
}

/// The session of a new connection: the one its token resumes (its socket id then
/// replaces the one asked for), or a new one. The response names its token.
fn open_session(
    server: &Server,
    request: &Request,
    info: &mut ConnectionInfo,
    response: &mut Response,
) -> (String, Option<Claimed>) {
    let offered = request
        .headers()
        .get(RESUME_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| info.query_param("resume"));
    let claimed = offered
        .as_deref()
        .and_then(|token| server.claim_session(token, &info.namespace));
    let token = match (&claimed, offered) {
        (Some(_), Some(token)) => token,
        _ => new_token(),
    };
    if let Ok(value) = token.parse() {
        response.headers_mut().insert(SESSION_HEADER, value);
    }
    if let Some(claimed) = &claimed {
        response.headers_mut().insert(
            RESUMED_HEADER,
            tungstenite::http::HeaderValue::from_static("1"),
        );
        info.socket_id = claimed.socket_id.clone();
    }
    (token, claimed)
}

/// An HTTP error answer to a handshake.
fn http_error(status: u16, body: &str) -> ErrorResponse {
    let mut error = ErrorResponse::new(Some(body.to_owned()));
    if let Ok(status) = tungstenite::http::StatusCode::from_u16(status) {
        *error.status_mut() = status;
    }
    error
}

fn request_info(request: &Request, peer_addr: Option<std::net::SocketAddr>) -> ConnectionInfo {
    let uri = request.uri();
    let namespace = match uri.path() {
        "" => "/".to_owned(),
        path => path.to_owned(),
    };
    let query = uri.query().unwrap_or("").to_owned();
    let socket_id = query_param(&query, "socket_id")
        .filter(|id| !id.is_empty())
        .unwrap_or_else(new_socket_id);
    let headers = request
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    ConnectionInfo {
        socket_id,
        namespace,
        query,
        headers,
        peer_addr,
    }
}

/// The codec a client declared: a subprotocol it offers (`msgpack` or `json`, which the
/// response then names) or `?encoding=msgpack|json`.
fn declared_codec(
    request: &Request,
    info: &ConnectionInfo,
    response: &mut Response,
) -> Option<Codec> {
    use tungstenite::http::header::SEC_WEBSOCKET_PROTOCOL;
    let offered = request
        .headers()
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|name| Codec::named(name).map(|codec| (name.trim().to_owned(), codec)));
    if let Some((name, codec)) = offered {
        if let Ok(value) = name.parse() {
            response.headers_mut().insert(SEC_WEBSOCKET_PROTOCOL, value);
        }
        return Some(codec);
    }
    info.query_param("encoding")
        .as_deref()
        .and_then(Codec::named)
}

/// A random id in the shape of a version 4 UUID, as rpc-websockets makes them.
fn new_socket_id() -> String {
    let random = || {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(0);
        h.finish()
    };
    let (a, b) = (random(), random());
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        ((b >> 48) & 0x3fff) | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_ids_look_like_uuids_and_differ() {
        let a = new_socket_id();
        let b = new_socket_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(a.as_bytes()[14], b'4');
    }
}
