//! Session resume: with `session_ttl` set, a connection that drops without saying
//! goodbye leaves its session parked here (socket id, login, subscriptions, and the
//! events meant for it) for that long. A client that reconnects with the session's
//! token gets it back, the missed events first, in order. Owned by the dispatcher.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use tungstenite::Bytes;

use crate::log_limit::warn_limited;
use crate::protocol::Codec;

/// Response header naming the connection's session token.
pub(crate) const SESSION_HEADER: &str = "x-wsrpc-session";
/// Request header (or `?resume=` query parameter) offering a token to resume.
pub(crate) const RESUME_HEADER: &str = "x-wsrpc-resume";
/// Response header present (`1`) when the offered session was resumed.
pub(crate) const RESUMED_HEADER: &str = "x-wsrpc-resumed";

/// A new session token: 128 bits from the operating system's secure random source, in
/// hex. There is no weaker fallback: if the source fails, so does the handshake.
pub(crate) fn new_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// What a resuming connection takes over.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Claimed {
    pub socket_id: String,
    pub logged_in: bool,
    /// The codec its missed events were encoded in.
    pub codec: Codec,
}

/// A disconnected connection's session, as it is being kept.
pub(crate) struct Parked {
    pub socket_id: String,
    pub namespace: String,
    pub logged_in: bool,
    pub subscriptions: Vec<String>,
    pub codec: Codec,
    /// Frames it was not sent, oldest first.
    pub missed: Vec<Bytes>,
    expires: Instant,
    /// A connection is resuming it (between its handshake and its registration).
    claimed: bool,
    /// It missed more than it may keep while claimed: it cannot be resumed.
    overflowed: bool,
}

impl Parked {
    pub(crate) fn new(
        socket_id: String,
        namespace: String,
        logged_in: bool,
        subscriptions: Vec<String>,
        codec: Codec,
        unsent: Vec<Bytes>,
        ttl: Duration,
    ) -> Self {
        Parked {
            socket_id,
            namespace,
            logged_in,
            subscriptions,
            codec,
            missed: unsent,
            expires: crate::deadline(ttl),
            claimed: false,
            overflowed: false,
        }
    }
}

#[derive(Default)]
pub(crate) struct Parking {
    sessions: HashMap<String, Parked>,
    /// Expiry times in the order sessions were parked (all share one ttl).
    expiry: VecDeque<(Instant, String)>,
    /// (namespace, event) to the tokens of parked subscribers.
    by_event: HashMap<(String, String), HashSet<String>>,
    /// (namespace, socket id) to the token of the session parked with that id.
    by_socket_id: HashMap<(String, String), String>,
}

impl Parking {
    /// Keep `session` under `token`; past `max` sessions the oldest unclaimed one goes,
    /// so connections that vanish cannot make the dispatcher hold ever more.
    pub(crate) fn park(&mut self, token: String, session: Parked, max: usize) {
        while self.sessions.len() >= max {
            let oldest = self.expiry.iter().position(|(at, t)| {
                self.sessions
                    .get(t)
                    .is_some_and(|s| s.expires == *at && !s.claimed)
            });
            let Some((_, evicted)) = oldest.and_then(|i| self.expiry.remove(i)) else {
                return;
            };
            if let Some(old) = self.remove(&evicted) {
                warn_limited!("too many parked sessions: {}'s is given up", old.socket_id);
            }
        }
        for event in &session.subscriptions {
            let key = (session.namespace.clone(), event.clone());
            self.by_event.entry(key).or_default().insert(token.clone());
        }
        let id = (session.namespace.clone(), session.socket_id.clone());
        // Socket ids are unique among connections, so an older session parked with the
        // same id is stale (its id was given to a new connection since).
        if let Some(stale) = self.by_socket_id.insert(id, token.clone())
            && stale != token
        {
            self.remove(&stale);
        }
        self.expiry.push_back((session.expires, token.clone()));
        log::debug!("session of {} parked", session.socket_id);
        self.sessions.insert(token, session);
    }

    /// Whether a new connection of `namespace` may take `socket_id`: yes if no session
    /// is parked with it, or if the one parked with it is not being resumed (that
    /// session is then given up: a connection is there, its id cannot come back); no
    /// while a connection is resuming it.
    pub(crate) fn free_socket_id(&mut self, namespace: &str, socket_id: &str) -> bool {
        let id = (namespace.to_owned(), socket_id.to_owned());
        let Some(token) = self.by_socket_id.get(&id).cloned() else {
            return true;
        };
        if self.sessions.get(&token).is_some_and(|s| s.claimed) {
            return false;
        }
        if let Some(session) = self.remove(&token) {
            log::debug!(
                "session of {} given up: a new connection took its socket id",
                session.socket_id
            );
        }
        true
    }

    /// Reserve a parked session of `namespace` for a resuming connection.
    pub(crate) fn claim(&mut self, token: &str, namespace: &str, now: Instant) -> Option<Claimed> {
        let session = self.sessions.get_mut(token)?;
        if session.claimed || session.namespace != namespace || now >= session.expires {
            return None;
        }
        session.claimed = true;
        Some(Claimed {
            socket_id: session.socket_id.clone(),
            logged_in: session.logged_in,
            codec: session.codec,
        })
    }

    /// The resuming connection's handshake failed: the session may be claimed again.
    pub(crate) fn unclaim(&mut self, token: &str, now: Instant) {
        let Some(session) = self.sessions.get_mut(token) else {
            return;
        };
        session.claimed = false;
        // It may have come due while claimed (expiry skips claimed sessions).
        if now >= session.expires {
            self.remove(token);
        }
    }

    /// Hand a session over to the connection that resumed it; `None` if it is gone
    /// or overflowed while claimed.
    pub(crate) fn take(&mut self, token: &str) -> Option<Parked> {
        let session = self.remove(token)?;
        (!session.overflowed).then_some(session)
    }

    /// Forget a session and every index entry that points to it.
    fn remove(&mut self, token: &str) -> Option<Parked> {
        let session = self.sessions.remove(token)?;
        self.forget_subscriptions(token, &session);
        let id = (session.namespace.clone(), session.socket_id.clone());
        if self.by_socket_id.get(&id).is_some_and(|t| t == token) {
            self.by_socket_id.remove(&id);
        }
        Some(session)
    }

    fn forget_subscriptions(&mut self, token: &str, session: &Parked) {
        for event in &session.subscriptions {
            let key = (session.namespace.clone(), event.clone());
            if let Some(tokens) = self.by_event.get_mut(&key) {
                tokens.remove(token);
                if tokens.is_empty() {
                    self.by_event.remove(&key);
                }
            }
        }
    }

    /// Keep an event for the parked subscribers of `(namespace, event)`. A session
    /// that would keep more than `limit` frames is given up: it could not be resumed
    /// without a gap.
    pub(crate) fn emit(
        &mut self,
        namespace: &str,
        event: &str,
        limit: usize,
        mut frame: impl FnMut(Codec) -> Option<Bytes>,
    ) {
        let key = (namespace.to_owned(), event.to_owned());
        let Some(tokens) = self.by_event.get(&key) else {
            return;
        };
        let mut overflowed = Vec::new();
        for token in tokens {
            let Some(session) = self.sessions.get_mut(token) else {
                continue;
            };
            if session.overflowed {
                continue;
            }
            if session.missed.len() >= limit {
                if session.claimed {
                    // Its claimant was told it resumed: it must be refused when it
                    // registers, not find its session gone.
                    session.overflowed = true;
                } else {
                    overflowed.push(token.clone());
                }
            } else if let Some(message) = frame(session.codec) {
                session.missed.push(message);
            }
        }
        for token in overflowed {
            if let Some(session) = self.remove(&token) {
                warn_limited!(
                    "session of {} missed more than {limit} events; it cannot be resumed",
                    session.socket_id
                );
            }
        }
    }

    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        self.expiry.front().map(|(at, _)| *at)
    }

    /// Forget the sessions whose time is up.
    pub(crate) fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.expiry.front() {
            if *at > now {
                break;
            }
            let Some((at, token)) = self.expiry.pop_front() else {
                break;
            };
            // A session resumed and parked again has a later expiry of its own; a
            // claimed one belongs to the connection resuming it (or to `unclaim`).
            if self
                .sessions
                .get(&token)
                .is_some_and(|s| s.expires == at && !s.claimed)
                && let Some(session) = self.remove(&token)
            {
                log::debug!("session of {} expired", session.socket_id);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.sessions.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parked(subscriptions: &[&str], ttl: Duration) -> Parked {
        Parked::new(
            "s1".into(),
            "/".into(),
            true,
            subscriptions.iter().map(|s| s.to_string()).collect(),
            Codec::Json,
            vec![Bytes::from_static(b"unsent")],
            ttl,
        )
    }

    fn text(s: &str) -> Option<Bytes> {
        Some(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn tokens_are_128_random_bits_in_hex() {
        let tokens: HashSet<String> = (0..1000).map(|_| new_token().unwrap()).collect();
        assert_eq!(tokens.len(), 1000);
        for token in &tokens {
            assert_eq!(token.len(), 32);
            assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
        }
        // Every bit position takes both values: no part of the token is fixed.
        let ones = |bit: usize| {
            let count = |t: &String| (u128::from_str_radix(t, 16).unwrap() >> bit) & 1;
            tokens.iter().map(count).sum::<u128>()
        };
        assert!((0..128).all(|bit| (1..1000).contains(&ones(bit))));
    }

    #[test]
    fn a_parked_session_keeps_its_events_in_order_after_the_unsent_ones() {
        let mut p = Parking::default();
        p.park("t".into(), parked(&["feed"], Duration::from_secs(60)), 10);
        p.emit("/", "feed", 10, |_| text("1"));
        p.emit("/", "other", 10, |_| text("x"));
        p.emit("/chat", "feed", 10, |_| text("x"));
        p.emit("/", "feed", 10, |_| text("2"));
        let claimed = p.claim("t", "/", Instant::now()).unwrap();
        assert_eq!(claimed.socket_id, "s1");
        assert!(claimed.logged_in);
        assert!(p.claim("t", "/", Instant::now()).is_none(), "claimed twice");
        let session = p.take("t").unwrap();
        assert_eq!(
            session.missed,
            [text("unsent"), text("1"), text("2")].map(Option::unwrap)
        );
        assert!(p.take("t").is_none());
        p.emit("/", "feed", 10, |_| panic!("nobody is parked any more"));
    }

    #[test]
    fn claims_need_the_same_namespace_and_can_be_released() {
        let mut p = Parking::default();
        p.park("t".into(), parked(&[], Duration::from_secs(60)), 10);
        assert!(p.claim("t", "/chat", Instant::now()).is_none());
        assert!(p.claim("nope", "/", Instant::now()).is_none());
        assert!(p.claim("t", "/", Instant::now()).is_some());
        p.unclaim("t", Instant::now());
        assert!(p.claim("t", "/", Instant::now()).is_some());
    }

    #[test]
    fn a_session_that_misses_too_much_is_given_up() {
        let mut p = Parking::default();
        p.park("t".into(), parked(&["feed"], Duration::from_secs(60)), 10);
        p.emit("/", "feed", 2, |_| text("1"));
        assert_eq!(p.len(), 1);
        p.emit("/", "feed", 2, |_| text("2"));
        assert_eq!(p.len(), 0);
        assert!(p.claim("t", "/", Instant::now()).is_none());
    }

    #[test]
    fn a_claimed_session_outlives_its_expiry_until_released() {
        let mut p = Parking::default();
        p.park("t".into(), parked(&["feed"], Duration::from_millis(10)), 10);
        assert!(p.claim("t", "/", Instant::now()).is_some());
        let at = p.next_expiry().unwrap();
        p.expire(at);
        assert!(p.take("t").is_some(), "the claimant lost its session");
        p.park("u".into(), parked(&[], Duration::from_millis(10)), 10);
        assert!(p.claim("u", "/", Instant::now()).is_some());
        let due = p.next_expiry().unwrap();
        p.expire(due);
        p.unclaim("u", due);
        assert_eq!(p.len(), 0, "an overdue session is dropped when released");
    }

    #[test]
    fn a_claimed_session_that_overflows_is_refused_to_its_claimant() {
        let mut p = Parking::default();
        p.park("t".into(), parked(&["feed"], Duration::from_secs(60)), 10);
        assert!(p.claim("t", "/", Instant::now()).is_some());
        p.emit("/", "feed", 1, |_| text("1"));
        p.emit("/", "feed", 1, |_| text("2"));
        assert!(
            p.take("t").is_none(),
            "an overflowed session was handed over"
        );
        assert_eq!(p.len(), 0);
    }

    #[test]
    fn past_the_cap_the_oldest_unclaimed_session_goes() {
        let mut p = Parking::default();
        p.park("a".into(), parked_as("a", "/"), 2);
        p.park("b".into(), parked_as("b", "/"), 2);
        assert!(p.claim("a", "/", Instant::now()).is_some());
        p.park("c".into(), parked_as("c", "/"), 2);
        assert!(p.take("a").is_some(), "a claimed session was evicted");
        assert!(
            p.claim("b", "/", Instant::now()).is_none(),
            "the oldest unclaimed stayed"
        );
        assert!(p.claim("c", "/", Instant::now()).is_some());
    }

    fn parked_as(id: &str, namespace: &str) -> Parked {
        let mut session = parked(&["feed"], Duration::from_secs(60));
        session.socket_id = id.into();
        session.namespace = namespace.into();
        session
    }

    #[test]
    fn a_new_connection_takes_a_parked_id_unless_it_is_being_resumed() {
        let mut p = Parking::default();
        p.park("t".into(), parked_as("a", "/"), 10);
        p.park("u".into(), parked_as("b", "/"), 10);
        assert!(p.free_socket_id("/", "x"), "nobody is parked as x");
        assert!(p.free_socket_id("/chat", "a"), "a is parked in / only");
        assert_eq!(p.len(), 2);
        assert!(p.claim("u", "/", Instant::now()).is_some());
        assert!(!p.free_socket_id("/", "b"), "b is being resumed");
        assert!(p.take("u").is_some());
        assert!(p.free_socket_id("/", "a"));
        assert!(p.claim("t", "/", Instant::now()).is_none(), "a was kept");
        assert_eq!(p.len(), 0);
        assert!(p.by_event.is_empty() && p.by_socket_id.is_empty());
    }

    #[test]
    fn a_session_parked_with_a_taken_id_replaces_the_stale_one() {
        let mut p = Parking::default();
        p.park("t".into(), parked_as("a", "/"), 10);
        p.park("u".into(), parked_as("a", "/"), 10);
        assert!(p.claim("t", "/", Instant::now()).is_none());
        assert!(p.claim("u", "/", Instant::now()).is_some());
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn sessions_expire() {
        let mut p = Parking::default();
        p.park("t".into(), parked(&["feed"], Duration::from_millis(10)), 10);
        let at = p.next_expiry().unwrap();
        p.expire(at - Duration::from_millis(1));
        assert_eq!(p.len(), 1);
        p.expire(at);
        assert_eq!(p.len(), 0);
        assert!(p.by_event.is_empty());
        assert!(p.by_socket_id.is_empty());
    }
}
