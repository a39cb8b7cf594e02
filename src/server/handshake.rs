//! The WebSocket handshake of a new connection: the request's path, query and headers,
//! the refusals (unknown namespace, origin, socket id in use), the codec and session it
//! declares, and the [`Conn`] it opens, within `handshake_timeout`.

use std::cell::Cell;
use std::net::TcpStream;
use std::sync::Arc;

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
use crate::log_limit::warn_limited;
use crate::protocol::Codec;
use crate::sink::Sink;
use crate::transport::ConnStream;

/// The WebSocket handshake, within `handshake_timeout`.
pub(super) fn open(
    server: &Server,
    key: u64,
    stream: TcpStream,
) -> Option<(Arc<Conn>, Reader, ConnectionInfo)> {
    let peer_addr = stream.peer_addr().ok();
    let config = server.config().clone();
    let _ = stream.set_nodelay(true);
    let deadline = crate::deadline(config.handshake_timeout);
    let socket = match server.socket(stream) {
        Ok(socket) => socket,
        Err(e) => {
            warn_limited!("{e}");
            return None;
        }
    };
    let sink = Arc::new(Sink::new(socket, Role::Server, config.websocket()));
    let mut info = None;
    let mut declared = None;
    let mut session = None;
    // The socket id it asked for and got, to give back if the handshake fails.
    let mut reserved = None;
    // A Cell: the failed handshake still holds the callback that set it.
    let refused = Cell::new(false);
    // tungstenite's callback type fixes the (large) error response type.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, mut response: Response| {
        let (mut found, asked_id) = request_info(request, peer_addr);
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
            warn_limited!("refused a connection from origin {origin}");
            return Err(http_error(403, "origin not allowed"));
        }
        declared = declared_codec(request, &found, &mut response);
        if server.config().session_ttl.is_some() {
            match open_session(server, request, &mut found, &mut response) {
                Ok(opened) => session = Some(opened),
                Err(e) => {
                    refused.set(true);
                    log::error!("no session token for a connection: {e}");
                    return Err(http_error(500, "no secure random source"));
                }
            }
        }
        // A resumed session brings its own socket id (the parked session held it).
        if !matches!(session, Some((_, Some(_)))) {
            match asked_id {
                Some(id) => match reserve_socket_id(server, &found.namespace, &id, key) {
                    Some(true) => {
                        found.socket_id = id.clone();
                        reserved = Some((found.namespace.clone(), id));
                    }
                    Some(false) => {
                        Counters::count(&server.counters().refused_socket_id);
                        refused.set(true);
                        log::debug!("refused a second connection as {id} in {}", found.namespace);
                        return Err(http_error(409, "socket id in use"));
                    }
                    None => {
                        refused.set(true);
                        return Err(http_error(503, "server shutting down"));
                    }
                },
                None => match new_socket_id() {
                    Ok(id) => found.socket_id = id,
                    Err(e) => {
                        refused.set(true);
                        log::error!("no socket id for a connection: {e}");
                        return Err(http_error(500, "no secure random source"));
                    }
                },
            }
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
            release_socket_id(server, reserved, key);
            return None;
        }
    };
    let info = info?;
    if reader.get_mut().opened(&config.heartbeat()).is_err() {
        if let Some((token, Some(_))) = session {
            server.dispatch(Command::Unclaim(token));
        }
        release_socket_id(server, reserved, key);
        return None;
    }
    let mut state = Session::new(key, info.socket_id.clone(), info.namespace.clone());
    let mut resumes = None;
    if let Some((token, claimed)) = session {
        if let Some(claimed) = claimed {
            // Its missed events are in the session's codec; keep it unless declared.
            declared = declared.or(Some(claimed.codec));
            state.restore(claimed.logged_in);
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
) -> Result<(String, Option<Claimed>), getrandom::Error> {
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
        // Nothing was claimed, so nothing is left claimed if this fails.
        _ => new_token()?,
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
    Ok((token, claimed))
}

/// Reserve the socket id a connection asked for in its namespace: a round trip to the
/// dispatcher, which owns the table of connections (during the handshake only).
/// `Some(false)`: an open connection holds it, or one is resuming the session parked
/// with it; `None`: the server is shutting down.
fn reserve_socket_id(server: &Server, namespace: &str, socket_id: &str, key: u64) -> Option<bool> {
    server.ask(|reply| Command::ReserveSocketId {
        namespace: namespace.to_owned(),
        socket_id: socket_id.to_owned(),
        key,
        reply,
    })
}

/// Give back a reserved (namespace, socket id): the handshake failed.
fn release_socket_id(server: &Server, reserved: Option<(String, String)>, key: u64) {
    if let Some((namespace, socket_id)) = reserved {
        server.dispatch(Command::ReleaseSocketId {
            namespace,
            socket_id,
            key,
        });
    }
}

/// An HTTP error answer to a handshake.
fn http_error(status: u16, body: &str) -> ErrorResponse {
    let mut error = ErrorResponse::new(Some(body.to_owned()));
    if let Ok(status) = tungstenite::http::StatusCode::from_u16(status) {
        *error.status_mut() = status;
    }
    error
}

/// What the request says about the connection, and the socket id it asks for (the
/// info's `socket_id` is left empty: it is settled once the id is reserved or made).
fn request_info(
    request: &Request,
    peer_addr: Option<std::net::SocketAddr>,
) -> (ConnectionInfo, Option<String>) {
    let uri = request.uri();
    let namespace = match uri.path() {
        "" => "/".to_owned(),
        path => path.to_owned(),
    };
    let query = uri.query().unwrap_or("").to_owned();
    let asked_id = query_param(&query, "socket_id").filter(|id| !id.is_empty());
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
    let info = ConnectionInfo {
        socket_id: String::new(),
        namespace,
        query,
        headers,
        peer_addr,
    };
    (info, asked_id)
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

/// A random id in the shape of a version 4 UUID, as rpc-websockets makes them: 122
/// bits from the operating system's secure random source (no weaker fallback).
fn new_socket_id() -> Result<String, getrandom::Error> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b)?;
    b[6] = 0x40 | (b[6] & 0x0f);
    b[8] = 0x80 | (b[8] & 0x3f);
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        hex(&b[..4]),
        hex(&b[4..6]),
        hex(&b[6..8]),
        hex(&b[8..10]),
        hex(&b[10..])
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_ids_are_random_version_4_uuids() {
        let ids: std::collections::HashSet<String> =
            (0..1000).map(|_| new_socket_id().unwrap()).collect();
        assert_eq!(ids.len(), 1000);
        let mut ones = [0u32; 128];
        for id in &ids {
            let groups: Vec<&str> = id.split('-').collect();
            assert_eq!(
                groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
                [8, 4, 4, 4, 12]
            );
            let bits = u128::from_str_radix(&groups.concat(), 16).unwrap();
            assert_eq!((bits >> 76) & 0xf, 4, "version 4: {id}");
            assert_eq!((bits >> 62) & 0b11, 0b10, "RFC 4122 variant: {id}");
            for (bit, n) in ones.iter_mut().enumerate() {
                *n += ((bits >> bit) & 1) as u32;
            }
        }
        // The 122 free bits all vary; the 6 fixed ones do not.
        let varying = ones.iter().filter(|&&n| n > 0 && n < 1000).count();
        assert_eq!(varying, 122);
    }
}
