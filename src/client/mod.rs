//! The blocking client: calls wait for their reply on the caller's thread; one I/O
//! thread per client reads replies and events and reconnects; one callback thread runs
//! the user's callbacks, so a callback may itself make calls.

mod link;
mod reconnect;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::Error;
use crate::lock;
use crate::protocol::Codec;
use crate::transport::{Sink, message};
use link::Control;
use reconnect::ReconnectPolicy;

type EventCallback = Arc<dyn Fn(&Value) + Send + Sync>;
type Callback<T> = Option<Arc<dyn Fn(&T) + Send + Sync>>;

/// How a connection of the client ended: given to [`ClientBuilder::on_close`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CloseInfo {
    /// The close code (1006 when the connection dropped without a close frame).
    pub code: u16,
    /// The close reason, possibly empty.
    pub reason: String,
    /// Whether the client will try to reconnect.
    pub reconnecting: bool,
}

#[derive(Default)]
struct Hooks {
    open: Option<Arc<dyn Fn() + Send + Sync>>,
    close: Callback<CloseInfo>,
    error: Callback<Error>,
}

/// Options of a [`Client`], named as in rpc-websockets.
///
/// ```no_run
/// use std::time::Duration;
/// let client = wsrpc::Client::builder("ws://127.0.0.1:8080/chat")
///     .reconnect_interval(Duration::from_millis(500))
///     .max_reconnects(0) // no limit
///     .timeout(Duration::from_secs(5))
///     .header("Authorization", "Bearer x")
///     .on_close(|c| eprintln!("closed: {} {}", c.code, c.reason))
///     .connect()?;
/// # Ok::<(), wsrpc::Error>(())
/// ```
#[must_use = "a builder does nothing until connect() or build() is called"]
pub struct ClientBuilder {
    url: String,
    autoconnect: bool,
    policy: ReconnectPolicy,
    timeout: Duration,
    headers: Vec<(String, String)>,
    socket_id: Option<String>,
    codec: Codec,
    hooks: Hooks,
}

impl ClientBuilder {
    fn new(url: &str) -> Self {
        ClientBuilder {
            url: url.to_owned(),
            autoconnect: true,
            policy: ReconnectPolicy {
                enabled: true,
                interval: Duration::from_secs(1),
                max_attempts: 5,
            },
            timeout: Duration::from_secs(30),
            headers: Vec::new(),
            socket_id: None,
            codec: Codec::Json,
            hooks: Hooks::default(),
        }
    }

    /// With [`build`](Self::build): connect in the background at once (default `true`);
    /// with `false` the client waits for [`Client::open`].
    pub fn autoconnect(mut self, yes: bool) -> Self {
        self.autoconnect = yes;
        self
    }

    /// Reconnect after the connection drops (default `true`). A close with code 1000
    /// (normal) is not a drop.
    pub fn reconnect(mut self, yes: bool) -> Self {
        self.policy.enabled = yes;
        self
    }

    /// Wait between reconnect attempts (default 1 s).
    pub fn reconnect_interval(mut self, interval: Duration) -> Self {
        self.policy.interval = interval;
        self
    }

    /// Attempts after a drop before giving up (default 5; 0 means no limit).
    pub fn max_reconnects(mut self, attempts: u32) -> Self {
        self.policy.max_attempts = attempts;
        self
    }

    /// How long a call waits for its reply unless it says otherwise (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// An extra header for the WebSocket handshake.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Ask the server to use this socket id (sent as `?socket_id=`).
    pub fn socket_id(mut self, id: &str) -> Self {
        self.socket_id = Some(id.to_owned());
        self
    }

    /// Speak MessagePack (binary frames) instead of JSON (default `false`). The
    /// client asks for it with `?encoding=msgpack`; replies are read in whichever
    /// codec the server sends, so it also works with servers that ignore the query.
    pub fn msgpack(mut self, yes: bool) -> Self {
        self.codec = if yes { Codec::MsgPack } else { Codec::Json };
        self
    }

    /// Called on the callback thread each time a connection opens (after a reconnect,
    /// once login and subscriptions are restored).
    pub fn on_open(mut self, f: impl Fn() + Send + Sync + 'static) -> Self {
        self.hooks.open = Some(Arc::new(f));
        self
    }

    /// Called on the callback thread each time a connection closes.
    pub fn on_close(mut self, f: impl Fn(&CloseInfo) + Send + Sync + 'static) -> Self {
        self.hooks.close = Some(Arc::new(f));
        self
    }

    /// Called on the callback thread for errors no call returns: failed reconnects,
    /// unreadable frames, failed re-subscriptions.
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
    pub fn build(self) -> Client {
        let mut query = Vec::new();
        if let Some(id) = &self.socket_id {
            query.push(("socket_id", id.as_str()));
        }
        if self.codec == Codec::MsgPack {
            query.push(("encoding", "msgpack"));
        }
        let url = link::Target::new(&self.url, &query, &self.headers);
        let (control_tx, control_rx) = crossbeam_channel::unbounded();
        let (jobs_tx, jobs_rx) = crossbeam_channel::unbounded();
        let (io_alive, io_done) = crossbeam_channel::bounded::<()>(0);
        let inner = Arc::new(Inner {
            target: url,
            policy: self.policy,
            timeout: self.timeout,
            codec: self.codec,
            hooks: self.hooks,
            state: Mutex::new(State::default()),
            next_id: AtomicU64::new(1),
            subscriptions: Mutex::new(HashMap::new()),
            subscribing: Mutex::new(()),
            login: Mutex::new(None),
            closed: AtomicBool::new(false),
            control: control_tx,
            jobs: jobs_tx,
            io_thread: Mutex::new(None),
            io_done,
        });
        let callbacks = Arc::downgrade(&inner);
        let spawned = thread::Builder::new()
            .name("wsrpc-client-callbacks".into())
            .spawn(move || run_callbacks(callbacks, jobs_rx));
        if let Err(e) = spawned {
            log::error!("could not start the client's callback thread: {e}");
        }
        let io = inner.clone();
        let autoconnect = self.autoconnect;
        match thread::Builder::new()
            .name("wsrpc-client".into())
            .spawn(move || {
                let _alive = io_alive;
                link::run(io, control_rx, autoconnect)
            }) {
            Ok(handle) => *lock(&inner.io_thread) = Some(handle),
            Err(e) => log::error!("could not start the client's I/O thread: {e}"),
        }
        Client {
            inner: inner.clone(),
            _owner: Arc::new(Owner(inner)),
        }
    }
}

/// A blocking rpc-websockets client. `Send + Sync` and cheap to clone: many threads may
/// call at once over one connection; replies are matched by id. Dropping the last clone
/// closes it.
///
/// ```no_run
/// use wsrpc::Client;
/// let client = Client::connect("ws://127.0.0.1:8080")?;
/// let sum: i64 = client.call_as("sum", [5, 3])?;
/// client.notify("log", ["hello"])?;
/// client.subscribe("feed", |params| println!("feed: {params}"))?;
/// client.login(serde_json::json!({"username": "foo", "password": "bar"}))?;
/// let methods = client.list_methods()?;
/// client.close();
/// # Ok::<(), wsrpc::Error>(())
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    _owner: Arc<Owner>,
}

/// Held only by user handles: when the last one goes, the client closes.
struct Owner(Arc<Inner>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.close();
    }
}

struct Inner {
    target: link::Target,
    policy: ReconnectPolicy,
    timeout: Duration,
    codec: Codec,
    hooks: Hooks,
    state: Mutex<State>,
    next_id: AtomicU64,
    subscriptions: Mutex<HashMap<String, Vec<EventCallback>>>,
    /// Held while `subscribe` / `unsubscribe` talk to the server.
    subscribing: Mutex<()>,
    /// The params of the last successful login, to log in again after a reconnect.
    login: Mutex<Option<Value>>,
    closed: AtomicBool,
    control: Sender<Control>,
    jobs: Sender<Job>,
    io_thread: Mutex<Option<JoinHandle<()>>>,
    /// Disconnected when the I/O thread ends.
    io_done: Receiver<()>,
}

/// The connection and the calls waiting on it, under one lock so that a call either
/// is failed by a drop or sees that there is no connection.
#[derive(Default)]
struct State {
    sink: Option<Arc<Sink>>,
    /// The socket of an attempt in its handshake, for `close` to cut short.
    connecting: Option<Arc<Sink>>,
    /// The I/O thread has ended: nobody will answer `waiting` any more.
    stopped: bool,
    pending: HashMap<u64, Sender<Result<Value, Error>>>,
    /// Callers of `open` waiting for the outcome of the next attempt.
    waiting: Vec<Sender<Result<(), Error>>>,
}

/// Work for the callback thread.
enum Job {
    Event(Vec<EventCallback>, Value),
    Opened { restore: bool },
    Closed(CloseInfo),
    Error(Error),
}

impl Client {
    /// Connect to `url` (`ws://host:port/namespace`) with default options.
    pub fn connect(url: &str) -> Result<Client, Error> {
        Client::builder(url).connect()
    }

    /// Options first, then `connect()` or `build()`.
    pub fn builder(url: &str) -> ClientBuilder {
        ClientBuilder::new(url)
    }

    /// Connect now if not connected; returns once connected or the attempt failed.
    pub fn open(&self) -> Result<(), Error> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        {
            // `close` sets `closed` and the I/O thread sets `stopped` under this lock,
            // so a waiter added here is always answered.
            let mut state = lock(&self.inner.state);
            if self.inner.closed.load(Ordering::SeqCst) || state.stopped {
                return Err(Error::Closed);
            }
            if state.sink.is_some() {
                return Ok(());
            }
            state.waiting.push(tx);
        }
        let _ = self.inner.control.send(Control::Open);
        rx.recv().unwrap_or(Err(Error::Closed))
    }

    /// Whether a connection is open now.
    pub fn is_connected(&self) -> bool {
        lock(&self.inner.state).sink.is_some()
    }

    /// Call `method` and wait for its result (up to the client's timeout). `params` is
    /// anything serde serializes to an array or object; `()` sends no params.
    pub fn call(&self, method: &str, params: impl Serialize) -> Result<Value, Error> {
        self.call_timeout(method, params, self.inner.timeout)
    }

    /// [`call`](Self::call), deserializing the result into `T`.
    pub fn call_as<T: DeserializeOwned>(
        &self,
        method: &str,
        params: impl Serialize,
    ) -> Result<T, Error> {
        let value = self.call(method, params)?;
        serde_json::from_value(value).map_err(|e| Error::Codec(e.to_string()))
    }

    /// [`call`](Self::call) with its own timeout.
    pub fn call_timeout(
        &self,
        method: &str,
        params: impl Serialize,
        timeout: Duration,
    ) -> Result<Value, Error> {
        self.inner.call(method, to_params(params)?, timeout)
    }

    /// Send a notification: the server runs `method` and answers nothing.
    pub fn notify(&self, method: &str, params: impl Serialize) -> Result<(), Error> {
        let params = to_params(params)?;
        self.inner
            .send_on(&*self.inner.sink()?, None, method, &params)
    }

    /// Subscribe to `event`; `callback` gets each event's params on the callback
    /// thread. More callbacks for the same event are added to it (the server is asked
    /// once). The server's refusal comes back as [`Error::Subscribe`] or as
    /// [`Error::Rpc`] (for example -32606 for a protected event before login).
    ///
    /// A callback that holds a clone of this client keeps the client open until
    /// [`close`](Self::close) is called, since dropping the other handles cannot.
    pub fn subscribe(
        &self,
        event: &str,
        callback: impl Fn(&Value) + Send + Sync + 'static,
    ) -> Result<(), Error> {
        // One subscription change at a time: a second callback for an event must not
        // be told "ok" before the server has said so for the first.
        let _one_at_a_time = lock(&self.inner.subscribing);
        let first = {
            let mut subs = lock(&self.inner.subscriptions);
            let list = subs.entry(event.to_owned()).or_default();
            list.push(Arc::new(callback));
            list.len() == 1
        };
        if !first {
            return Ok(());
        }
        let outcome = self.inner.server_subscribe(&[event.to_owned()]);
        if outcome.is_err() {
            lock(&self.inner.subscriptions).remove(event);
        }
        outcome
    }

    /// Drop every callback of `event` and unsubscribe from it.
    pub fn unsubscribe(&self, event: &str) -> Result<(), Error> {
        let _one_at_a_time = lock(&self.inner.subscribing);
        if lock(&self.inner.subscriptions).remove(event).is_none() {
            return Ok(());
        }
        let result = self.call("rpc.off", [event])?;
        match result.get(event).and_then(Value::as_str) {
            Some("ok") | Some("not subscribed") => Ok(()),
            other => Err(Error::Subscribe {
                event: event.to_owned(),
                reason: other.unwrap_or("no answer for the event").to_owned(),
            }),
        }
    }

    /// Log in to the namespace (`rpc.login`). Anything but a truthy answer is
    /// [`Error::AuthFailed`]. After a reconnect the client logs in again by itself.
    pub fn login(&self, params: impl Serialize) -> Result<Value, Error> {
        let params = to_params(params)?;
        let result = self
            .inner
            .call("rpc.login", params.clone(), self.inner.timeout)?;
        if matches!(result, Value::Null | Value::Bool(false)) {
            return Err(Error::AuthFailed);
        }
        *lock(&self.inner.login) = Some(params);
        Ok(result)
    }

    /// The names of the namespace's methods (`__listMethods`).
    pub fn list_methods(&self) -> Result<Vec<String>, Error> {
        self.call_as("__listMethods", ())
    }

    /// Close the connection with code 1000 and stop reconnecting. Pending calls fail
    /// with [`Error::Closed`]; later calls too.
    pub fn close(&self) {
        self.inner.close();
    }
}

fn to_params(params: impl Serialize) -> Result<Value, Error> {
    serde_json::to_value(params).map_err(|e| Error::Codec(e.to_string()))
}

impl Inner {
    fn sink(&self) -> Result<Arc<Sink>, Error> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        lock(&self.state).sink.clone().ok_or(Error::NotConnected)
    }

    /// Send a call or notification in the client's codec on `sink`.
    fn send_on(
        &self,
        sink: &Sink,
        id: Option<u64>,
        method: &str,
        params: &Value,
    ) -> Result<(), Error> {
        let bytes = self.codec.encode_call(id, method, params);
        let frame = message(self.codec, bytes).map_err(|e| Error::Codec(e.to_string()))?;
        sink.send(frame).map_err(Error::from)
    }

    fn call(&self, method: &str, params: Value, timeout: Duration) -> Result<Value, Error> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = crossbeam_channel::bounded(1);
        let sink = {
            let mut state = lock(&self.state);
            let sink = state.sink.clone().ok_or(Error::NotConnected)?;
            state.pending.insert(id, tx);
            sink
        };
        if let Err(e) = self.send_on(&sink, Some(id), method, &params) {
            lock(&self.state).pending.remove(&id);
            return Err(e);
        }
        match rx.recv_timeout(timeout) {
            Ok(outcome) => outcome,
            Err(RecvTimeoutError::Timeout) => {
                lock(&self.state).pending.remove(&id);
                Err(Error::Timeout)
            }
            Err(RecvTimeoutError::Disconnected) => Err(Error::ConnectionLost),
        }
    }

    /// `rpc.on` for `events`; every one must come back "ok" (or already subscribed).
    fn server_subscribe(&self, events: &[String]) -> Result<(), Error> {
        let result = self.call("rpc.on", Value::from(events.to_vec()), self.timeout)?;
        for event in events {
            match result.get(event).and_then(Value::as_str) {
                Some("ok") | Some("socket has already been subscribed to event") => {}
                other => {
                    return Err(Error::Subscribe {
                        event: event.clone(),
                        reason: other.unwrap_or("no answer for the event").to_owned(),
                    });
                }
            }
        }
        Ok(())
    }

    /// After a reconnect: log in again, then subscribe again, then report the open.
    fn restore(&self) {
        let login = lock(&self.login).clone();
        if let Some(params) = login
            && let Err(e) = self.call("rpc.login", params, self.timeout)
        {
            self.report(Error::Protocol(format!("logging in again failed: {e}")));
        }
        let events: Vec<String> = lock(&self.subscriptions).keys().cloned().collect();
        if !events.is_empty()
            && let Err(e) = self.server_subscribe(&events)
        {
            self.report(Error::Protocol(format!("subscribing again failed: {e}")));
        }
    }

    fn report(&self, error: Error) {
        log::warn!("{error}");
        if let Some(hook) = &self.hooks.error {
            guarded("on_error", || hook(&error));
        }
    }

    fn close(&self) {
        let (sink, connecting) = {
            let mut state = lock(&self.state);
            if self.closed.swap(true, Ordering::SeqCst) {
                return;
            }
            (state.sink.clone(), state.connecting.take())
        };
        let _ = self.control.send(Control::Close);
        if let Some(connecting) = connecting {
            connecting.shutdown();
        }
        // A write blocked on a server that stopped reading holds the sink: then cut
        // the connection instead of waiting behind it.
        if let Some(sink) = &sink
            && !sink.try_close(1000, "")
        {
            sink.shutdown();
        }
        let handle = lock(&self.io_thread).take();
        if let Some(handle) = handle
            && handle.thread().id() != thread::current().id()
        {
            if let Some(sink) = &sink {
                link::await_close(sink, &self.io_done);
            }
            let _ = handle.join();
        }
    }
}

fn run_callbacks(inner: std::sync::Weak<Inner>, jobs: Receiver<Job>) {
    for job in jobs {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        match job {
            Job::Event(callbacks, params) => {
                for callback in callbacks {
                    guarded("event", || callback(&params));
                }
            }
            Job::Opened { restore } => {
                if restore {
                    inner.restore();
                }
                if let Some(hook) = &inner.hooks.open {
                    guarded("on_open", || hook());
                }
            }
            Job::Closed(info) => {
                if let Some(hook) = &inner.hooks.close {
                    guarded("on_close", || hook(&info));
                }
            }
            Job::Error(error) => inner.report(error),
        }
    }
}

/// Run a user callback; a panic is logged and the callback thread carries on.
fn guarded(name: &str, f: impl FnOnce()) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
        log::error!("the {name} callback panicked");
    }
}
