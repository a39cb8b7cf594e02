//! The blocking client: calls wait for their reply on the caller's thread; one I/O
//! thread per client reads replies and events and reconnects; one callback thread runs
//! the user's callbacks, so a callback may itself make calls. After a reconnect, login
//! and subscriptions are restored on a short-lived thread of their own, so a slow
//! callback cannot hold the restore up.

mod builder;
mod link;
mod reconnect;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::{self, JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, SendTimeoutError, Sender, TrySendError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub use builder::{ClientBuilder, CloseInfo, CloseKind};

use crate::error::{Error, ErrorDetail};
use crate::lock;
use crate::sink::Sink;
use crate::transport::message;
use builder::{Hooks, Options};
use link::Control;

type EventCallback = Arc<dyn Fn(&Value) + Send + Sync>;

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

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The address without its query (it may carry a token); no header values.
        f.debug_struct("Client")
            .field("url", &self.inner.target.display_url())
            .field("connected", &self.is_connected())
            .field("closed", &self.inner.closed.load(Ordering::SeqCst))
            .field("dropped_events", &self.dropped_events())
            .finish_non_exhaustive()
    }
}

/// Jobs other than events and frame errors that may wait in the callback queue beyond
/// its capacity: opens and closes, a handful at a time (the I/O thread waits for each
/// `on_close` before it retries).
const LIFECYCLE_SLACK: usize = 16;

/// How long `close` waits for the I/O thread to end before leaving it to end on its
/// own (it may be in a connect or a DNS lookup that cannot be interrupted).
const IO_THREAD_WAIT: Duration = Duration::from_secs(1);

/// `after` from now, or `None` (never) when that is past what an `Instant` can hold.
fn deadline_after(after: Duration) -> Option<Instant> {
    Instant::now().checked_add(after)
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
    options: Options,
    hooks: Hooks,
    state: Mutex<State>,
    /// Signalled when `ready` or `reconnecting` changes.
    state_changed: Condvar,
    next_id: AtomicU64,
    subscriptions: Mutex<HashMap<String, Vec<EventCallback>>>,
    /// Held while `subscribe` / `unsubscribe` talk to the server.
    subscribing: Mutex<()>,
    /// The params of the last successful login, to log in again after a reconnect.
    login: Mutex<Option<Value>>,
    closed: AtomicBool,
    control: Sender<Control>,
    /// Bounded: `options.callback_queue` events, plus [`LIFECYCLE_SLACK`].
    jobs: Sender<Job>,
    /// Events thrown away because the callback queue was full, in all.
    dropped_events: AtomicU64,
    /// Of those, how many `on_error` has not been told about yet.
    unreported_drops: AtomicU64,
    io_thread: Mutex<Option<JoinHandle<()>>>,
    /// Disconnected when the I/O thread ends.
    io_done: Receiver<()>,
    /// The thread that runs callbacks.
    callback_thread: OnceLock<ThreadId>,
    /// A name lookup is under way (at most one: see `link::resolve`).
    lookup_running: Arc<AtomicBool>,
}

/// The connection and the calls waiting on it, under one lock so that a call either
/// is failed by a drop or sees that there is no connection.
#[derive(Default)]
struct State {
    sink: Option<Arc<Sink>>,
    /// Connected, and login and subscriptions restored: user calls may go.
    ready: bool,
    /// Counts connections, so a late restore cannot mark a newer one ready.
    generation: u64,
    /// An attempt is under way or scheduled.
    reconnecting: bool,
    /// The socket of an attempt in its handshake, for `close` to cut short.
    connecting: Option<Arc<Sink>>,
    /// The I/O thread has ended: nobody will answer `waiting` any more.
    stopped: bool,
    pending: HashMap<u64, Sender<Result<Value, Error>>>,
    /// The token of the server-side session, offered back when reconnecting so that a
    /// server keeping sessions (`session_ttl`) resumes it.
    session_token: Option<String>,
    /// Callers of `open` waiting for the next connection (or failed attempt).
    waiting: Vec<Sender<Result<(), Error>>>,
}

/// Work for the callback thread.
enum Job {
    Event(Vec<EventCallback>, Value),
    /// A connection opened; `restore`: log in and subscribe again, then mark it ready.
    Opened {
        generation: u64,
        restore: bool,
    },
    /// The sender is dropped once `on_close` has returned.
    Closed(CloseInfo, Sender<()>),
    Error(Error),
}

/// Who is calling: the user waits for a restored connection, the restore itself
/// cannot.
#[derive(Clone, Copy, PartialEq)]
enum Caller {
    User,
    Restore,
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

    fn start(target: link::Target, options: Options, hooks: Hooks, autoconnect: bool) -> Client {
        let (control_tx, control_rx) = crossbeam_channel::unbounded();
        let (jobs_tx, jobs_rx) =
            crossbeam_channel::bounded(options.callback_queue + LIFECYCLE_SLACK);
        let (io_alive, io_done) = crossbeam_channel::bounded::<()>(0);
        let inner = Arc::new(Inner {
            target,
            options,
            hooks,
            state: Mutex::new(State::default()),
            state_changed: Condvar::new(),
            next_id: AtomicU64::new(1),
            subscriptions: Mutex::new(HashMap::new()),
            subscribing: Mutex::new(()),
            login: Mutex::new(None),
            closed: AtomicBool::new(false),
            control: control_tx,
            jobs: jobs_tx,
            dropped_events: AtomicU64::new(0),
            unreported_drops: AtomicU64::new(0),
            io_thread: Mutex::new(None),
            io_done,
            callback_thread: OnceLock::new(),
            lookup_running: Arc::new(AtomicBool::new(false)),
        });
        let callbacks = Arc::downgrade(&inner);
        let spawned = thread::Builder::new()
            .name("wsrpc-client-callbacks".into())
            .spawn(move || run_callbacks(callbacks, jobs_rx));
        if let Err(e) = spawned {
            log::error!("could not start the client's callback thread: {e}");
        }
        let io = inner.clone();
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

    /// Connect now if not connected; returns once connected (and, after a reconnect,
    /// restored) or once the attempt failed (or the client was closed meanwhile).
    /// Called from a callback, it only starts the attempt and returns at once.
    pub fn open(&self) -> Result<(), Error> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        {
            // `close` sets `closed` and the I/O thread sets `stopped` under this lock,
            // so a waiter added here is always answered.
            let mut state = lock(&self.inner.state);
            if self.inner.closed.load(Ordering::SeqCst) || state.stopped {
                return Err(Error::Closed);
            }
            if state.ready {
                return Ok(());
            }
            state.waiting.push(tx);
        }
        let _ = self.inner.control.send(Control::Open);
        // On the callback thread (inside on_close, say) the connection cannot become
        // ready until this callback returns: ask for it and return at once.
        if self.inner.callback_thread.get() == Some(&thread::current().id()) {
            return Ok(());
        }
        rx.recv().unwrap_or(Err(Error::Closed))
    }

    /// Whether a connection is open now (and, after a reconnect, restored).
    pub fn is_connected(&self) -> bool {
        lock(&self.inner.state).ready
    }

    /// Events thrown away so far because the callback queue was full (see
    /// [`ClientBuilder::callback_queue`]).
    pub fn dropped_events(&self) -> u64 {
        self.inner.dropped_events.load(Ordering::Relaxed)
    }

    /// Call `method` and wait for its result (up to the client's timeout). `params` is
    /// anything serde serializes to an array or object; `()` sends no params.
    pub fn call(&self, method: &str, params: impl Serialize) -> Result<Value, Error> {
        self.call_timeout(method, params, self.inner.options.timeout)
    }

    /// [`call`](Self::call), deserializing the result into `T`.
    pub fn call_as<T: DeserializeOwned>(
        &self,
        method: &str,
        params: impl Serialize,
    ) -> Result<T, Error> {
        let value = self.call(method, params)?;
        serde_json::from_value(value).map_err(Error::codec)
    }

    /// [`call`](Self::call) with its own timeout (`Duration::MAX`: wait for ever).
    ///
    /// A send blocked on a server that stopped reading is cut off after the client's
    /// [`timeout`](ClientBuilder::timeout) (not this one): the connection is then lost.
    pub fn call_timeout(
        &self,
        method: &str,
        params: impl Serialize,
        timeout: Duration,
    ) -> Result<Value, Error> {
        self.inner
            .call(method, to_params(params)?, timeout, Caller::User)
    }

    /// Send a notification: the server runs `method` and answers nothing.
    pub fn notify(&self, method: &str, params: impl Serialize) -> Result<(), Error> {
        let params = to_params(params)?;
        let deadline = deadline_after(self.inner.options.timeout);
        let sink = self.inner.sink_for(Caller::User, deadline)?;
        self.inner.send_on(&sink, None, method, &params)
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
        let outcome = self
            .inner
            .server_subscribe(&[event.to_owned()], Caller::User);
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
        let timeout = self.inner.options.timeout;
        let result = self
            .inner
            .call("rpc.login", params.clone(), timeout, Caller::User)?;
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
    serde_json::to_value(params).map_err(Error::codec)
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// The connection a call may use. A user call needs it restored; when the user
    /// opted in, it waits for a reconnect until `deadline` (`None`: for ever).
    fn sink_for(&self, caller: Caller, deadline: Option<Instant>) -> Result<Arc<Sink>, Error> {
        let mut state = self.state();
        loop {
            if self.closed.load(Ordering::SeqCst) {
                return Err(Error::Closed);
            }
            let usable = match caller {
                Caller::User => state.ready,
                Caller::Restore => state.sink.is_some(),
            };
            if usable && let Some(sink) = &state.sink {
                return Ok(sink.clone());
            }
            if caller == Caller::Restore
                || !self.options.wait_while_reconnecting
                || !state.reconnecting
            {
                return Err(Error::NotConnected);
            }
            let Some(deadline) = deadline else {
                state = self
                    .state_changed
                    .wait(state)
                    .unwrap_or_else(|e| e.into_inner());
                continue;
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout);
            }
            state = self
                .state_changed
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Send a call or notification in the client's codec on `sink`.
    fn send_on(
        &self,
        sink: &Sink,
        id: Option<u64>,
        method: &str,
        params: &Value,
    ) -> Result<(), Error> {
        let codec = self.options.codec;
        let frame = message(codec, codec.encode_call(id, method, params)).map_err(Error::codec)?;
        sink.send(frame).map_err(|e| match e {
            // The socket's write timeout (the client's `timeout`) passed: the server
            // stopped reading, and the sink has cut the connection.
            tungstenite::Error::Io(io)
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Error::Timeout
            }
            // The connection was cut under us (a stalled send, a drop the I/O thread
            // has not seen yet).
            tungstenite::Error::Io(io)
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::BrokenPipe
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::NotConnected
                ) =>
            {
                Error::ConnectionLost
            }
            other => Error::from(other),
        })
    }

    fn call(
        &self,
        method: &str,
        params: Value,
        timeout: Duration,
        caller: Caller,
    ) -> Result<Value, Error> {
        let deadline = deadline_after(timeout);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = crossbeam_channel::bounded(1);
        let sink = self.sink_for(caller, deadline)?;
        {
            // A drop fails everything pending under this lock: register only if the
            // connection is still the one we got.
            let mut state = self.state();
            if !state.sink.as_ref().is_some_and(|s| Arc::ptr_eq(s, &sink)) {
                return Err(Error::ConnectionLost);
            }
            state.pending.insert(id, tx);
        }
        if let Err(e) = self.send_on(&sink, Some(id), method, &params) {
            self.state().pending.remove(&id);
            return Err(e);
        }
        let reply = match deadline {
            Some(deadline) => rx.recv_deadline(deadline),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match reply {
            Ok(outcome) => outcome,
            Err(RecvTimeoutError::Timeout) => {
                self.state().pending.remove(&id);
                Err(Error::Timeout)
            }
            Err(RecvTimeoutError::Disconnected) => Err(Error::ConnectionLost),
        }
    }

    /// `rpc.on` for `events`; every one must come back "ok" (or already subscribed).
    fn server_subscribe(&self, events: &[String], caller: Caller) -> Result<(), Error> {
        let params = Value::from(events.to_vec());
        let result = self.call("rpc.on", params, self.options.timeout, caller)?;
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

    /// Whether a new connection has anything to restore before it is ready.
    fn needs_restore(&self) -> bool {
        lock(&self.login).is_some() || !lock(&self.subscriptions).is_empty()
    }

    /// After a reconnect: log in again, then subscribe again.
    fn restore(&self) {
        let login = lock(&self.login).clone();
        let timeout = self.options.timeout;
        if let Some(params) = login
            && let Err(e) = self.call("rpc.login", params, timeout, Caller::Restore)
        {
            self.report(Error::Protocol(ErrorDetail::with(
                "logging in again failed",
                e,
            )));
        }
        let events: Vec<String> = lock(&self.subscriptions).keys().cloned().collect();
        if !events.is_empty()
            && let Err(e) = self.server_subscribe(&events, Caller::Restore)
        {
            self.report(Error::Protocol(ErrorDetail::with(
                "subscribing again failed",
                e,
            )));
        }
    }

    /// Connection `generation` may take user calls: wake whoever waits for it.
    fn mark_ready(&self, generation: u64) {
        let waiting = {
            let mut state = self.state();
            if state.generation != generation || state.sink.is_none() {
                return;
            }
            state.ready = true;
            std::mem::take(&mut state.waiting)
        };
        self.state_changed.notify_all();
        for waiter in waiting {
            let _ = waiter.send(Ok(()));
        }
    }

    fn set_reconnecting(&self, yes: bool) {
        self.state().reconnecting = yes;
        self.state_changed.notify_all();
    }

    /// Queue an event (or an error about a frame) for the callback thread; when the
    /// queue holds `callback_queue` jobs already, it is dropped and counted instead:
    /// the I/O thread never waits for a callback.
    fn queue_event(&self, job: Job) {
        let queued = self.jobs.len() < self.options.callback_queue
            && match self.jobs.try_send(job) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => false,
                Err(TrySendError::Disconnected(_)) => return,
            };
        if !queued {
            self.dropped_events.fetch_add(1, Ordering::Relaxed);
            self.unreported_drops.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Queue an open or a close (for `on_open` / `on_close`): these are never dropped
    /// while the client is open. They take the slack above the events' capacity, and
    /// there are few of them (the I/O thread waits for each `on_close` before it
    /// retries); should a callback that never returns let even that fill, the caller
    /// waits, looking every 50 ms whether the client was closed meanwhile.
    fn queue_lifecycle(&self, mut job: Job) {
        loop {
            match self.jobs.send_timeout(job, Duration::from_millis(50)) {
                Ok(()) | Err(SendTimeoutError::Disconnected(_)) => return,
                Err(SendTimeoutError::Timeout(back)) => {
                    if self.closed.load(Ordering::SeqCst) {
                        log::debug!("closed with the callback queue full: a job is dropped");
                        return;
                    }
                    job = back;
                }
            }
        }
    }

    /// Queue a failed attempt's error for `on_error`; dropped (and logged) when the
    /// queue is full: `on_close` reports every failed attempt too.
    fn queue_report(&self, error: Error) {
        if self.hooks.error.is_none() {
            log::warn!("{error}");
            return;
        }
        // The slack above the events' capacity is kept for opens and closes.
        if self.jobs.len() >= self.options.callback_queue {
            log::warn!("{error} (not given to on_error: the callback queue is full)");
            return;
        }
        if let Err(TrySendError::Full(Job::Error(error))) = self.jobs.try_send(Job::Error(error)) {
            log::warn!("{error} (not given to on_error: the callback queue is full)");
        }
    }

    /// Tell `on_error` about events dropped since it was last told.
    fn report_drops(&self) {
        let dropped = self.unreported_drops.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            self.report(Error::EventsDropped { dropped });
        }
    }

    fn report(&self, error: Error) {
        log::warn!("{error}");
        if let Some(hook) = &self.hooks.error {
            guarded("on_error", || hook(&error));
        }
    }

    fn close(&self) {
        let (sink, connecting, waiting) = {
            let mut state = self.state();
            if self.closed.swap(true, Ordering::SeqCst) {
                return;
            }
            (
                state.sink.clone(),
                state.connecting.take(),
                std::mem::take(&mut state.waiting),
            )
        };
        self.state_changed.notify_all();
        // Callers of `open` learn now, not when an attempt under way ends.
        for waiter in waiting {
            let _ = waiter.send(Err(Error::Closed));
        }
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
            // A connect or DNS lookup cannot be interrupted: rather than wait for it,
            // leave the thread to end on its own (it finds the client closed and
            // stops). Everything else it does ends once the socket is shut.
            match self.io_done.recv_timeout(IO_THREAD_WAIT) {
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = handle.join();
                }
                _ => log::debug!("the client's I/O thread is left to end on its own"),
            }
        }
    }
}

fn run_callbacks(inner: std::sync::Weak<Inner>, jobs: Receiver<Job>) {
    if let Some(inner) = inner.upgrade() {
        let _ = inner.callback_thread.set(thread::current().id());
    }
    for job in jobs {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        inner.report_drops();
        match job {
            Job::Event(callbacks, params) => {
                for callback in callbacks {
                    guarded("event", || callback(&params));
                }
            }
            Job::Opened {
                generation,
                restore,
            } => {
                if restore {
                    inner.restore();
                    inner.mark_ready(generation);
                }
                if let Some(hook) = &inner.hooks.open {
                    guarded("on_open", || hook());
                }
            }
            Job::Closed(info, done) => {
                if let Some(hook) = &inner.hooks.close {
                    guarded("on_close", || hook(&info));
                }
                drop(done);
            }
            Job::Error(error) => inner.report(error),
        }
        inner.report_drops();
    }
}

/// After a reconnect: log in and subscribe again, mark the connection ready, then let
/// `on_open` run. On a thread of its own, so that it does not wait behind callbacks
/// queued before it (and a callback that waits for the connection cannot hold it up);
/// on the callback thread only if no thread can be started.
fn restore_then_open(inner: &Arc<Inner>, generation: u64) {
    let restorer = inner.clone();
    let spawned = thread::Builder::new()
        .name("wsrpc-client-restore".into())
        .spawn(move || {
            restorer.restore();
            restorer.mark_ready(generation);
            if restorer.hooks.open.is_some() {
                restorer.queue_lifecycle(Job::Opened {
                    generation,
                    restore: false,
                });
            }
        });
    if let Err(e) = spawned {
        log::warn!("could not start a thread to restore the connection: {e}");
        inner.queue_lifecycle(Job::Opened {
            generation,
            restore: true,
        });
    }
}

/// Run a user callback; a panic is logged and the callback thread carries on.
fn guarded(name: &str, f: impl FnOnce()) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
        log::error!("the {name} callback panicked");
    }
}
