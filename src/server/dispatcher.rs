//! The dispatcher thread: the single owner of the connection table and of who is
//! subscribed to what. It fans events out, answers `clients()`, closes namespaces and
//! the server, and watches for handlers that run long enough to hold up their
//! connection's later requests.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use serde_json::Value;
use tungstenite::Bytes;

use super::Server;
use super::connection::Conn;
use super::fanout::{Delivery, FanOut, Frames};
use super::resume::{Claimed, Parked, Parking};
use super::socket_ids::SocketIds;
use crate::protocol::Codec;
use crate::sink::server_frame;

/// Everything the dispatcher is asked to do.
pub(crate) enum Command {
    /// A connection finished its handshake.
    Connect(Arc<Conn>),
    /// A connection ended; `resumable`: its session may be parked.
    Disconnect {
        key: u64,
        resumable: bool,
    },
    /// Reserve a parked session for a resuming connection.
    Claim {
        token: String,
        namespace: String,
        reply: Sender<Option<Claimed>>,
    },
    /// A resuming connection failed its handshake.
    Unclaim(String),
    /// Reserve the socket id a connection asked for; `false`: it is taken.
    ReserveSocketId {
        namespace: String,
        socket_id: String,
        key: u64,
        reply: Sender<bool>,
    },
    /// A connection that reserved a socket id failed its handshake.
    ReleaseSocketId {
        namespace: String,
        socket_id: String,
        key: u64,
    },
    /// `rpc.on` (`subscribe`) or `rpc.off` of known events, in request order; the
    /// answer says, name by name, whether it changed anything.
    Subscriptions {
        key: u64,
        events: Vec<String>,
        subscribe: bool,
        reply: Sender<Vec<bool>>,
    },
    /// Send an event to its subscribers; `params` is already an array or object.
    Emit {
        namespace: String,
        event: String,
        params: Value,
    },
    Clients {
        namespace: String,
        reply: Sender<Vec<String>>,
    },
    CloseNamespace {
        namespace: String,
        done: Sender<()>,
    },
    Shutdown {
        done: Sender<()>,
    },
    /// A handler started while the slow-call watch was asleep.
    Wake,
}

/// Emits sent out together, at most, when several are queued.
const EMIT_BATCH: usize = 64;

/// How often the dispatcher looks whether the writer pool is stuck while connections
/// wait for a writer.
const POOL_LOOK: std::time::Duration = std::time::Duration::from_millis(10);

/// Scans without a busy handler before the watch goes to sleep (about a second).
const IDLE_SCANS_BEFORE_SLEEP: u32 = 50;

#[derive(Default)]
struct NamespaceClients {
    clients: HashSet<u64>,
    subscribers: HashMap<String, HashMap<u64, Arc<Conn>>>,
}

pub(crate) struct Dispatcher {
    server: Server,
    commands: Receiver<Command>,
    conns: HashMap<u64, Arc<Conn>>,
    namespaces: HashMap<String, NamespaceClients>,
    idle_scans: u32,
    /// Connections told to close, in order of the time they get to answer.
    closing: VecDeque<(Instant, u64)>,
    /// Sessions of dropped connections, kept for `session_ttl`.
    parking: Parking,
    /// Who holds which socket id, handshakes included.
    socket_ids: SocketIds,
    /// The threads that share the writing of an event with many subscribers.
    fanout: FanOut,
    /// A command taken from the queue while looking for emits to send together with
    /// one: the next one to handle.
    next: Option<Command>,
}

impl Dispatcher {
    pub(crate) fn new(server: Server, commands: Receiver<Command>) -> Self {
        Dispatcher {
            server,
            commands,
            conns: HashMap::new(),
            namespaces: HashMap::new(),
            idle_scans: 0,
            closing: VecDeque::new(),
            parking: Parking::default(),
            socket_ids: SocketIds::default(),
            fanout: FanOut::new(),
            next: None,
        }
    }

    pub(crate) fn run(mut self) {
        let tick = self.server.config().slow_call_threshold;
        let mut next_scan: Option<Instant> = None;
        let mut next_pool_look: Option<Instant> = None;
        let mut writers_seen = 0;
        loop {
            next_pool_look = match (self.server.writers().others_waiting(), next_pool_look) {
                (false, _) => None,
                (true, None) => Some(Instant::now() + POOL_LOOK),
                (true, at) => at,
            };
            let watching = !self.server.watch_asleep().load(Ordering::SeqCst);
            next_scan = match (watching, next_scan) {
                (false, _) => None,
                (true, None) => Some(crate::deadline(tick)),
                (true, at) => at,
            };
            let next_drop = self.closing.front().map(|(at, _)| *at);
            let next_expiry = self.parking.next_expiry();
            let deadlines = next_scan
                .into_iter()
                .chain(next_drop)
                .chain(next_expiry)
                .chain(next_pool_look);
            let received = match (self.next.take(), deadlines.min()) {
                (Some(command), _) => Ok(command),
                (None, None) => self
                    .commands
                    .recv()
                    .map_err(|_| RecvTimeoutError::Disconnected),
                (None, Some(at)) => self.commands.recv_deadline(at),
            };
            match received {
                Ok(Command::Shutdown { done }) => {
                    self.shutdown();
                    // Whoever waits for an answer to what is still queued is told now
                    // (its reply channel closes), not left waiting.
                    while self.commands.try_recv().is_ok() {}
                    let _ = done.send(());
                    return;
                }
                Ok(command) => self.handle(command),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            // Deadlines are checked after every command too, so a steady stream of
            // commands cannot starve them.
            let now = Instant::now();
            if next_scan.is_some_and(|at| now >= at) {
                self.scan_for_slow_calls();
                next_scan = Some(crate::deadline(tick));
            }
            if next_pool_look.is_some_and(|at| now >= at) {
                self.server.unstick_writers(&mut writers_seen);
                next_pool_look = None;
            }
            self.drop_overdue(now);
            self.parking.expire(now);
        }
    }

    /// Connections sent a close frame that did not answer within `close_timeout`.
    fn drop_overdue(&mut self, now: Instant) {
        while let Some((at, _)) = self.closing.front() {
            if *at > now {
                break;
            }
            let Some((_, key)) = self.closing.pop_front() else {
                break;
            };
            if let Some(conn) = self.conns.get(&key) {
                conn.drop_connection(1001, "namespace closed");
            }
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Connect(conn) => self.connect(conn),
            Command::Disconnect { key, resumable } => self.forget(key, resumable),
            Command::Claim {
                token,
                namespace,
                reply,
            } => {
                let claimed = self.parking.claim(&token, &namespace, Instant::now());
                let _ = reply.send(claimed);
            }
            Command::Unclaim(token) => self.parking.unclaim(&token, Instant::now()),
            Command::ReserveSocketId {
                namespace,
                socket_id,
                key,
                reply,
            } => {
                let parking = &mut self.parking;
                let free = self.socket_ids.reserve(&namespace, &socket_id, key, || {
                    parking.free_socket_id(&namespace, &socket_id)
                });
                let _ = reply.send(free);
            }
            Command::ReleaseSocketId {
                namespace,
                socket_id,
                key,
            } => self.socket_ids.release(&namespace, &socket_id, key),
            Command::Subscriptions {
                key,
                events,
                subscribe,
                reply,
            } => {
                let changed = self.change_subscriptions(key, events, subscribe);
                let _ = reply.send(changed);
            }
            Command::Emit {
                namespace,
                event,
                params,
            } => {
                // Emits queued behind this one go out with it: to each subscriber in
                // one write, in emit order. (Only when the dispatcher is behind.)
                let mut batch = vec![(namespace, event, params)];
                // Never more than a subscriber's queue may hold.
                let most = EMIT_BATCH.min(self.server.config().outgoing_queue);
                while batch.len() < most && self.next.is_none() {
                    match self.commands.try_recv() {
                        Ok(Command::Emit {
                            namespace,
                            event,
                            params,
                        }) => batch.push((namespace, event, params)),
                        // Taken next, by the loop, as if it were still queued.
                        Ok(other) => self.next = Some(other),
                        Err(_) => break,
                    }
                }
                self.emit(&batch);
            }
            Command::Clients { namespace, reply } => {
                let ids = self.namespaces.get(&namespace).map(|ns| {
                    ns.clients
                        .iter()
                        .filter_map(|key| self.conns.get(key))
                        .map(|conn| conn.session.socket_id.clone())
                        .collect()
                });
                let _ = reply.send(ids.unwrap_or_default());
            }
            Command::CloseNamespace { namespace, done } => {
                if let Some(ns) = self.namespaces.remove(&namespace) {
                    let deadline = crate::deadline(self.server.config().close_timeout);
                    for key in ns.clients {
                        if let Some(conn) = self.conns.get(&key) {
                            conn.close(&self.server, 1001, "namespace closed");
                            self.closing.push_back((deadline, key));
                        }
                    }
                }
                let _ = done.send(());
            }
            Command::Wake => {}
            // Only one close() runs at a time; answer a stray one anyway.
            Command::Shutdown { done } => {
                let _ = done.send(());
            }
        }
    }

    fn connect(&mut self, conn: Arc<Conn>) {
        let ns = conn.session.namespace.clone();
        let key = conn.session.key;
        self.socket_ids.hold(&ns, &conn.session.socket_id, key);
        let clients = self.namespaces.entry(ns).or_default();
        clients.clients.insert(key);
        let resumed = conn.resumes.as_deref().map(|t| self.parking.take(t));
        if let Some(None) = resumed {
            // Told at the handshake that it resumed, but the session overflowed (or
            // went) since: end it, and the client starts afresh on its next connect.
            conn.drop_connection(1011, "session could not be resumed");
        }
        if let Some(Some(session)) = resumed {
            // Its subscriptions carry over, and what it missed goes out first.
            for event in &session.subscriptions {
                let subscribers = clients.subscribers.entry(event.clone()).or_default();
                subscribers.insert(key, conn.clone());
            }
            log::debug!(
                "session of {} resumed with {} missed events",
                session.socket_id,
                session.missed.len()
            );
            for frame in &session.missed {
                if !conn.push(&self.server, std::slice::from_ref(frame)) {
                    conn.drop_connection(1008, "outgoing queue full");
                    break;
                }
            }
        }
        self.conns.insert(key, conn);
    }

    /// Subscribe connection `key` to `events` or unsubscribe it, one by one; whether
    /// each changed anything. A connection already gone changes nothing.
    fn change_subscriptions(
        &mut self,
        key: u64,
        events: Vec<String>,
        subscribe: bool,
    ) -> Vec<bool> {
        let Some(conn) = self.conns.get(&key).cloned() else {
            return vec![false; events.len()];
        };
        let ns = self
            .namespaces
            .entry(conn.session.namespace.clone())
            .or_default();
        events
            .into_iter()
            .map(|event| {
                if subscribe {
                    let subscribers = ns.subscribers.entry(event).or_default();
                    subscribers.insert(key, conn.clone()).is_none()
                } else {
                    let Some(subscribers) = ns.subscribers.get_mut(&event) else {
                        return false;
                    };
                    let removed = subscribers.remove(&key).is_some();
                    if subscribers.is_empty() {
                        ns.subscribers.remove(&event);
                    }
                    removed
                }
            })
            .collect()
    }

    /// The events connection `key` of namespace `ns` is subscribed to.
    fn subscriptions_of(&self, ns: &str, key: u64) -> Vec<String> {
        self.namespaces.get(ns).map_or_else(Vec::new, |ns| {
            ns.subscribers
                .iter()
                .filter(|(_, subscribers)| subscribers.contains_key(&key))
                .map(|(event, _)| event.clone())
                .collect()
        })
    }

    fn forget(&mut self, key: u64, resumable: bool) {
        let Some(conn) = self.conns.remove(&key) else {
            return;
        };
        let session = &conn.session;
        self.socket_ids
            .release(&session.namespace, &session.socket_id, key);
        if resumable {
            self.park(&conn);
        }
        let ns_name = &conn.session.namespace;
        if let Some(ns) = self.namespaces.get_mut(ns_name) {
            ns.clients.remove(&key);
            ns.subscribers.retain(|_, subscribers| {
                subscribers.remove(&key);
                !subscribers.is_empty()
            });
            // Any path may be a namespace: keep no entry for one nobody is on.
            if ns.clients.is_empty() {
                self.namespaces.remove(ns_name);
            }
        }
    }

    /// Send events (namespace, name, params) to their subscribers, each subscriber's
    /// in emit order and in one write.
    fn emit(&mut self, batch: &[(String, String, Value)]) {
        let limit = self.server.config().session_buffer;
        let mut deliveries: Vec<Delivery> = Vec::new();
        // Where each connection's frames are in `deliveries` (with several events).
        let mut index: HashMap<u64, usize> = HashMap::new();
        for (namespace, event, params) in batch {
            let mut frames = EventFrames::new(event, params);
            self.parking
                .emit(namespace, event, limit, |codec| frames.get(codec));
            let Some(subscribers) = self
                .namespaces
                .get(namespace)
                .and_then(|ns| ns.subscribers.get(event))
            else {
                continue;
            };
            for (key, conn) in subscribers {
                let Some(frame) = frames.get(conn.codec()) else {
                    continue;
                };
                if batch.len() == 1 {
                    deliveries.push((conn.clone(), Frames::One(frame)));
                    continue;
                }
                match index.entry(*key) {
                    Entry::Occupied(at) => deliveries[*at.get()].1.push(frame),
                    Entry::Vacant(at) => {
                        at.insert(deliveries.len());
                        deliveries.push((conn.clone(), Frames::One(frame)));
                    }
                }
            }
        }
        self.fanout.send(&self.server, deliveries);
    }

    /// Keep a dropped connection's session, if sessions are kept and it has a token.
    fn park(&mut self, conn: &Conn) {
        let (Some(ttl), Some(token)) = (self.server.config().session_ttl, &conn.session.token)
        else {
            return;
        };
        let session = Parked::new(
            conn.session.socket_id.clone(),
            conn.session.namespace.clone(),
            conn.session.logged_in(),
            self.subscriptions_of(&conn.session.namespace, conn.session.key),
            conn.codec(),
            conn.take_unsent(),
            ttl,
        );
        let max = self.server.config().max_parked_sessions;
        self.parking.park(token.clone(), session, max);
    }

    /// A handler that has been running since the last scan holds up its connection's
    /// next requests: hand the connection's reader to a new thread.
    fn scan_for_slow_calls(&mut self) {
        let mut busy = false;
        for conn in self.conns.values() {
            if !conn.in_handler() {
                continue;
            }
            busy = true;
            if conn.same_handler_as_last_scan() {
                // A long handler: the replies held back before it go out now (even if
                // no new reader can take over), and later requests get a new reader.
                conn.flush_soon(&self.server);
                conn.hand_off(&self.server);
            }
        }
        self.idle_scans = if busy { 0 } else { self.idle_scans + 1 };
        if self.idle_scans >= IDLE_SCANS_BEFORE_SLEEP {
            // Sleep until a connection starts a handler. Set the flag first, then look
            // once more: a handler that started meanwhile either sees the flag (and
            // wakes us) or is seen here.
            let asleep = self.server.watch_asleep();
            asleep.store(true, Ordering::SeqCst);
            if self.conns.values().any(|c| c.in_handler()) {
                asleep.store(false, Ordering::SeqCst);
            }
            self.idle_scans = 0;
        }
    }

    /// Close every connection with 1001, give clients `close_timeout` to answer, then
    /// drop whoever is left.
    fn shutdown(&mut self) {
        // `close` shut the registration gate before sending Shutdown, so every
        // connection that got through it is in `conns` now.
        for conn in self.conns.values() {
            conn.close(&self.server, 1001, "server shutting down");
        }
        let deadline = crate::deadline(self.server.config().close_timeout);
        while !self.conns.is_empty() {
            match self.commands.recv_deadline(deadline) {
                Ok(command) => self.handle_while_closing(command),
                Err(_) => break,
            }
        }
        for conn in self.conns.values() {
            conn.drop_connection(1001, "server shutting down");
        }
    }

    fn handle_while_closing(&mut self, command: Command) {
        match command {
            Command::Connect(conn) => {
                conn.close(&self.server, 1001, "server shutting down");
                self.conns.insert(conn.session.key, conn);
            }
            // Dropping the reply tells the caller the server is shutting down.
            Command::Emit { .. } | Command::Subscriptions { .. } => {}
            other => self.handle(other),
        }
    }
}

/// One event's frames, encoded on first use for each codec: however many subscribers
/// there are, the event is encoded at most once per codec and the frames share bytes.
struct EventFrames<'a> {
    name: &'a str,
    params: &'a Value,
    frames: [Option<Bytes>; 2],
    #[cfg(test)]
    encodings: usize,
}

impl<'a> EventFrames<'a> {
    fn new(name: &'a str, params: &'a Value) -> Self {
        EventFrames {
            name,
            params,
            frames: [None, None],
            #[cfg(test)]
            encodings: 0,
        }
    }

    fn get(&mut self, codec: Codec) -> Option<Bytes> {
        let slot = &mut self.frames[codec.index()];
        if slot.is_none() {
            #[cfg(test)]
            {
                self.encodings += 1;
            }
            match server_frame(codec, codec.encode_event(self.name, self.params)) {
                Ok(frame) => *slot = Some(frame),
                Err(e) => log::error!("event '{}' did not encode: {e}", self.name),
            }
        }
        slot.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_event_is_encoded_once_per_codec() {
        let params = json!({"a": 1});
        let mut frames = EventFrames::new("feed", &params);
        for _ in 0..3 {
            for codec in [Codec::Json, Codec::MsgPack] {
                assert!(frames.get(codec).is_some());
            }
        }
        assert_eq!(frames.encodings, 2);
        // Whole server frames: FIN and the opcode (text, binary), the length, the
        // payload; no mask.
        let json = r#"{"notification":"feed","params":{"a":1}}"#;
        let mut text = vec![0x81, json.len() as u8];
        text.extend_from_slice(json.as_bytes());
        assert_eq!(frames.get(Codec::Json).as_deref(), Some(&text[..]));
        assert_eq!(frames.get(Codec::MsgPack).map(|f| f[0]), Some(0x82));
    }
}
