//! The server: a listener thread, a thread per connection that reads requests and
//! answers them itself, and one dispatcher thread that owns connections and
//! subscriptions and fans events out.
//!
//! ```text
//!  accept ──spawn──▶ connection thread ──reply──▶ socket
//!                         │ (un)subscribe, connect, disconnect
//!  emit() ───────────▶ dispatcher ──bounded queue──▶ writer thread ──event──▶ socket
//! ```

mod admission;
mod calls;
mod config;
mod connection;
mod dispatcher;
mod fanout;
#[cfg(fuzzing)]
pub(crate) mod fuzz;
mod handshake;
mod namespace;
mod registry;
mod resume;
mod socket_ids;
mod threads;

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use admission::Stats;
pub use config::{ConnectionInfo, DisconnectInfo, ServerBuilder, ServerConfig};
pub use namespace::{EventHandle, MethodHandle, Namespace};

use crate::error::{Error, RpcError};
use crate::lock;
use crate::log_limit::warn_limited;
use admission::{Admission, Counters, Refusal};
use config::Hooks;
use dispatcher::{Command, Dispatcher};
use registry::Registry;

/// What a handler knows about the call it serves.
pub struct Context<'a> {
    server: &'a Server,
    socket_id: &'a str,
    namespace: &'a str,
    logged_in: bool,
}

impl std::fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("socket_id", &self.socket_id)
            .field("namespace", &self.namespace)
            .field("logged_in", &self.logged_in)
            .finish_non_exhaustive()
    }
}

impl Context<'_> {
    /// The caller's socket id.
    pub fn socket_id(&self) -> &str {
        self.socket_id
    }

    /// The caller's namespace (its URL path).
    pub fn namespace(&self) -> &str {
        self.namespace
    }

    /// Whether the caller has logged in to its namespace.
    pub fn is_logged_in(&self) -> bool {
        self.logged_in
    }

    /// The server, to emit events or look at other namespaces from a handler.
    pub fn server(&self) -> &Server {
        self.server
    }
}

/// A running rpc-websockets-compatible server. Cheap to clone: every clone is a handle
/// to the same server.
///
/// ```
/// use wsrpc::{Server, RpcError};
///
/// let server = Server::bind("127.0.0.1:0").unwrap();
/// server.register("sum", |nums: Vec<f64>, _ctx| Ok::<_, RpcError>(nums.iter().sum::<f64>()));
/// server.event("tick");
/// server.emit("tick", 1).unwrap();
/// server.close();
/// ```
#[derive(Clone)]
pub struct Server {
    shared: Arc<Shared>,
}

struct Shared {
    config: ServerConfig,
    hooks: Hooks,
    local_addr: SocketAddr,
    registry: Registry,
    commands: Sender<Command>,
    closing: AtomicBool,
    /// Set when the dispatcher thread has stopped: nobody answers commands any more.
    dispatcher_gone: AtomicBool,
    /// Set once `start` has finished (after `ServerBuilder::setup`).
    started: AtomicBool,
    /// Set by the dispatcher when it stops watching for slow handlers; a connection that
    /// starts one wakes it.
    watch_asleep: AtomicBool,
    next_key: AtomicU64,
    /// Open while new connections may join the dispatcher's table; `close` shuts it.
    registering: Mutex<bool>,
    /// Connections still in their handshake (unknown to the dispatcher), so `close`
    /// can cut them off; `None` once closing.
    handshaking: Mutex<Option<HashMap<u64, TcpStream>>>,
    /// The threads `spawn` started (connections, writers, hand-offs), for `close`.
    live: Arc<threads::Live>,
    running: Mutex<Option<Running>>,
    /// A second handle on the listening socket, to wake the acceptor at `close`.
    waker: Mutex<Option<TcpListener>>,
    /// Set once `close` has finished; `wait` waits for it.
    closed: (Mutex<bool>, Condvar),
    admission: Arc<Admission>,
    counters: Counters,
    /// Writer threads, shared by every connection.
    writers: threads::WriterPool<connection::Conn>,
    /// Threads started to read on while a slow handler runs.
    handoffs: threads::Capped,
    /// Helper threads of the dispatcher's fan-out (it sets this).
    fanout_threads: AtomicUsize,
    #[cfg(feature = "tls")]
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.shared.local_addr)
            .field("closing", &self.is_closing())
            .finish_non_exhaustive()
    }
}

struct Running {
    acceptor: JoinHandle<()>,
    dispatcher: JoinHandle<()>,
}

impl Server {
    /// Start a server on `addr` with the default configuration.
    pub fn bind(addr: impl ToSocketAddrs) -> Result<Server, Error> {
        Server::builder().bind(addr)
    }

    /// A builder for config and lifecycle callbacks.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    fn start(mut builder: ServerBuilder, addr: impl ToSocketAddrs) -> Result<Server, Error> {
        let listener = TcpListener::bind(addr)?;
        let local_addr = listener.local_addr()?;
        let setup = builder.setup.take();
        let (server, commands) = Server::unstarted(builder, local_addr);
        *lock(&server.shared.waker) = Some(listener.try_clone()?);
        let dispatcher = thread::Builder::new()
            .name("wsrpc-dispatch".into())
            .spawn({
                let server = server.clone();
                move || {
                    server.mark_thread();
                    Dispatcher::new(server.clone(), commands).run();
                    server.shared.dispatcher_gone.store(true, Ordering::SeqCst);
                }
            })?;
        // Methods and events the builder sets up exist before the first connection
        // is accepted (connections meanwhile wait in the listen backlog).
        if let Some(setup) = setup {
            setup(&server);
        }
        let acceptor = thread::Builder::new().name("wsrpc-accept".into()).spawn({
            let server = server.clone();
            move || {
                server.mark_thread();
                server.accept_loop(listener)
            }
        })?;
        *lock(&server.shared.running) = Some(Running {
            acceptor,
            dispatcher,
        });
        server.shared.started.store(true, Ordering::SeqCst);
        if server.is_closing() {
            // `close` was called during setup.
            server.close();
            return Ok(server);
        }
        log::info!("listening on {local_addr}");
        server.shared.hooks.listening(&local_addr);
        Ok(server)
    }

    fn unstarted(builder: ServerBuilder, local_addr: SocketAddr) -> (Server, Receiver<Command>) {
        let (commands_tx, commands_rx) = crossbeam_channel::bounded(4096);
        let writers = threads::WriterPool::new(builder.config.max_writer_threads);
        let handoffs = threads::Capped::new(builder.config.max_handoff_threads);
        let shared = Shared {
            writers,
            handoffs,
            fanout_threads: AtomicUsize::new(0),
            config: builder.config,
            hooks: builder.hooks,
            local_addr,
            registry: Registry::default(),
            commands: commands_tx,
            closing: AtomicBool::new(false),
            dispatcher_gone: AtomicBool::new(false),
            started: AtomicBool::new(false),
            watch_asleep: AtomicBool::new(false),
            next_key: AtomicU64::new(1),
            registering: Mutex::new(true),
            handshaking: Mutex::new(Some(HashMap::new())),
            live: Arc::new(threads::Live::new()),
            running: Mutex::new(None),
            waker: Mutex::new(None),
            closed: (Mutex::new(false), Condvar::new()),
            admission: Arc::default(),
            counters: Counters::default(),
            #[cfg(feature = "tls")]
            tls: builder.tls,
        };
        let server = Server {
            shared: Arc::new(shared),
        };
        (server, commands_rx)
    }

    /// A server with no threads, whose dispatcher commands the test reads itself.
    #[cfg(any(test, fuzzing))]
    pub(crate) fn detached() -> (Server, Receiver<Command>) {
        Server::unstarted(ServerBuilder::default(), ([127, 0, 0, 1], 0).into())
    }

    /// The address the server listens on (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// The namespace at URL path `path` (`"/chat"`; `""` is `"/"`). Clients may connect
    /// to any path; with [`ServerConfig::refuse_unknown_namespaces`] only to those with
    /// something registered.
    pub fn namespace(&self, path: &str) -> Namespace {
        Namespace::new(self.clone(), path)
    }

    fn root(&self) -> Namespace {
        self.namespace("/")
    }

    /// Register a method in namespace `/`; see [`Namespace::register`].
    pub fn register<P, R, F>(&self, name: &str, handler: F) -> MethodHandle
    where
        P: DeserializeOwned,
        R: Serialize,
        F: Fn(P, &Context<'_>) -> Result<R, RpcError> + Send + Sync + 'static,
    {
        self.root().register(name, handler)
    }

    /// Register a method of namespace `/` that needs a login, in one step; see
    /// [`Namespace::register_protected`].
    pub fn register_protected<P, R, F>(&self, name: &str, handler: F) -> MethodHandle
    where
        P: DeserializeOwned,
        R: Serialize,
        F: Fn(P, &Context<'_>) -> Result<R, RpcError> + Send + Sync + 'static,
    {
        self.root().register_protected(name, handler)
    }

    /// Declare an event in namespace `/`; see [`Namespace::event`].
    pub fn event(&self, name: &str) -> EventHandle {
        self.root().event(name)
    }

    /// Declare an event of namespace `/` that needs a login, in one step; see
    /// [`Namespace::event_protected`].
    pub fn event_protected(&self, name: &str) -> EventHandle {
        self.root().event_protected(name)
    }

    /// Send an event of namespace `/` to its subscribers; see [`Namespace::emit`].
    pub fn emit(&self, name: &str, value: impl Serialize) -> Result<(), Error> {
        self.root().emit(name, value)
    }

    /// The events of namespace `/`.
    pub fn event_list(&self) -> Vec<String> {
        self.root().event_list()
    }

    /// Set the `rpc.login` handler of namespace `/`; see [`Namespace::set_auth`].
    pub fn set_auth<P, F>(&self, handler: F)
    where
        P: DeserializeOwned,
        F: Fn(P, &Context<'_>) -> Result<bool, RpcError> + Send + Sync + 'static,
    {
        self.root().set_auth(handler)
    }

    /// Socket ids of the clients connected to namespace `/`.
    pub fn clients(&self) -> Vec<String> {
        self.root().clients()
    }

    /// Stop: no new connections; every client gets a close frame with code 1001 (going
    /// away) and up to [`ServerConfig::close_timeout`] to answer it; then the server's
    /// threads get as long again to end, and the handlers are dropped.
    ///
    /// It returns within about twice `close_timeout` whatever handlers do: a handler
    /// still running then is abandoned (its thread runs on, detached, until the handler
    /// returns; its reply goes nowhere). It may be called from anywhere, handlers and
    /// the builder's callbacks included; a call while another is under way waits for
    /// that one (or returns at once on one of the server's own threads). Calling it
    /// again after it returned does nothing.
    pub fn close(&self) {
        let running = lock(&self.shared.running).take();
        let Some(Running {
            acceptor,
            dispatcher,
        }) = running
        else {
            if !self.shared.started.load(Ordering::SeqCst) {
                // Still in `ServerBuilder::setup`: the server closes as soon as it ends.
                self.shared.closing.store(true, Ordering::SeqCst);
            } else if !self.on_own_thread() {
                self.wait();
            }
            return;
        };
        let timeout = self.shared.config.close_timeout;
        self.shared.closing.store(true, Ordering::SeqCst);
        if let Some(listener) = lock(&self.shared.waker).take() {
            wake_acceptor(listener, self.shared.local_addr);
        }
        if !is_current(&acceptor) {
            let _ = acceptor.join();
        }
        // Close the gate here, not in the dispatcher: a connection thread may hold it
        // while waiting for room in the command channel, which only the running
        // dispatcher makes. Every Connect is then queued before Shutdown. It must shut
        // before the handshakes below are cut: a connection that registered after the
        // cut would live on with a dead read side and end in a reset, without 1001.
        self.stop_registering();
        // Only the read side: a stalled handshake ends on EOF, while one that has
        // just finished can still send its client 1001 when it fails to register.
        for (_, stream) in lock(&self.shared.handshaking).take().into_iter().flatten() {
            let _ = stream.shutdown(std::net::Shutdown::Read);
        }
        // The dispatcher gives clients `close_timeout`; it never waits for a handler,
        // only works through the commands queued before this one.
        self.ask(|done| Command::Shutdown { done });
        if !is_current(&dispatcher) {
            let _ = dispatcher.join();
        }
        self.shared.live.close();
        self.shared.writers.shut_down();
        let own = usize::from(self.on_own_thread());
        if !self.shared.live.wait_for(own, crate::deadline(timeout)) {
            log::warn!(
                "server on {}: {} threads (running handlers) did not end within close_timeout; \
                 they are abandoned",
                self.shared.local_addr,
                self.shared.live.running().saturating_sub(own)
            );
        }
        self.shared.registry.clear();
        log::info!("server on {} closed", self.shared.local_addr);
        *lock(&self.shared.closed.0) = true;
        self.shared.closed.1.notify_all();
    }

    /// Wait until the server is closed (by [`Server::close`] from another thread, a
    /// handler or a signal handler). Dropping every `Server` handle does not stop a
    /// server: its threads hold handles of their own, so it serves until `close`. A
    /// `main` that only serves ends with `server.wait()`.
    ///
    /// ```no_run
    /// let server = wsrpc::Server::bind("127.0.0.1:8080")?;
    /// server.register("ping", |_: (), _| Ok::<_, wsrpc::RpcError>("pong"));
    /// server.wait();
    /// # Ok::<(), wsrpc::Error>(())
    /// ```
    pub fn wait(&self) {
        let mut closed = lock(&self.shared.closed.0);
        while !*closed {
            closed = self
                .shared
                .closed
                .1
                .wait(closed)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Note that the calling thread is one of this server's (for `close`).
    fn mark_thread(&self) {
        SERVER_THREAD.with(|t| t.set(self.id()));
    }

    /// Whether the calling thread is one this server started.
    fn on_own_thread(&self) -> bool {
        SERVER_THREAD.with(|t| t.get() == self.id())
    }

    /// Tells this server's threads from other servers': the address of its state.
    fn id(&self) -> usize {
        Arc::as_ptr(&self.shared) as usize
    }

    fn accept_loop(&self, listener: TcpListener) {
        for stream in listener.incoming() {
            if self.shared.closing.load(Ordering::SeqCst) {
                break;
            }
            match stream {
                Ok(stream) => self.admit(stream),
                Err(e) => {
                    self.report(Error::Io(e));
                    // Out of file descriptors or similar: give the system a moment
                    // instead of spinning on the same error.
                    thread::sleep(std::time::Duration::from_millis(10));
                }
            }
        }
    }

    /// Start a connection thread, or refuse the connection at once if a limit is hit.
    fn admit(&self, stream: TcpStream) {
        let config = &self.shared.config;
        let ip = stream
            .peer_addr()
            .map(|a| a.ip())
            .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
        let admitted =
            self.shared
                .admission
                .admit(ip, config.max_connections, config.max_connections_per_ip);
        let slot = match admitted {
            Ok(slot) => slot,
            Err(refusal) => {
                let (counter, why) = match refusal {
                    Refusal::Full => (&self.shared.counters.refused_full, "max_connections"),
                    Refusal::TooManyFromAddress => (
                        &self.shared.counters.refused_per_address,
                        "max_connections_per_ip",
                    ),
                };
                Counters::count(counter);
                warn_limited!("refused a connection from {ip}: {why} reached");
                admission::refuse(stream, refusal);
                return;
            }
        };
        let server = self.clone();
        let spawned = self.spawn("wsrpc-conn", config.handshake_stack_size(), move || {
            connection::serve(server, stream, slot)
        });
        if let Err(e) = spawned {
            self.report(Error::Io(e));
        }
    }

    /// Open connections, and how often each protection of the server kicked in.
    pub fn stats(&self) -> Stats {
        let open = self.shared.admission.open_connections();
        let mut stats = Stats::read(
            &self.shared.counters,
            open,
            self.shared.admission.held_bytes(),
        );
        stats.writer_threads = self.shared.writers.threads();
        stats.handoff_threads = self.shared.handoffs.running();
        stats.fanout_threads = self.shared.fanout_threads.load(Ordering::Relaxed);
        stats
    }

    /// The byte stream of an accepted connection: TLS if the server serves TLS.
    pub(crate) fn socket(&self, stream: TcpStream) -> Result<crate::socket::Socket, Error> {
        #[cfg(feature = "tls")]
        if let Some(config) = &self.shared.tls {
            let tls = crate::tls::TlsSocket::server(stream, config.clone())?;
            return Ok(crate::socket::Socket::Tls(Box::new(tls)));
        }
        Ok(crate::socket::Socket::Plain(stream))
    }

    pub(crate) fn writers(&self) -> &threads::WriterPool<connection::Conn> {
        &self.shared.writers
    }

    pub(crate) fn fanout_threads(&self) -> &AtomicUsize {
        &self.shared.fanout_threads
    }

    pub(crate) fn handoffs(&self) -> &threads::Capped {
        &self.shared.handoffs
    }

    /// Have a writer thread of the pool send what `conn` has queued (its writer flag
    /// is set: it is queued once).
    pub(crate) fn start_writing(&self, conn: Arc<connection::Conn>) {
        match self.shared.writers.enqueue(conn) {
            threads::Enqueued::Taken => {}
            threads::Enqueued::AtCap => Counters::count(&self.shared.counters.writers_at_cap),
            threads::Enqueued::StartThread => self.start_writer_thread(),
        }
    }

    /// Every writer is stuck on a client that does not read while connections wait:
    /// start one more, up to `max_writer_threads` (the dispatcher looks every few
    /// milliseconds while connections wait).
    pub(crate) fn unstick_writers(&self, seen: &mut u64) {
        if self.shared.writers.stuck(seen) {
            match self.shared.writers.grow() {
                threads::Enqueued::StartThread => self.start_writer_thread(),
                _ => Counters::count(&self.shared.counters.writers_at_cap),
            }
        }
    }

    /// Start a writer thread the pool has counted in.
    fn start_writer_thread(&self) {
        let server = self.clone();
        let started = self.spawn("wsrpc-writer", connection::WRITER_STACK, move || {
            connection::writer_thread(server)
        });
        if let Err(e) = started {
            // The connection stays queued: the next one queued tries again.
            self.shared.writers.not_started();
            warn_limited!("could not start a writer thread: {e}");
        }
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    pub(crate) fn config(&self) -> &ServerConfig {
        &self.shared.config
    }

    pub(crate) fn hooks(&self) -> &Hooks {
        &self.shared.hooks
    }

    pub(crate) fn registry(&self) -> &Registry {
        &self.shared.registry
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.shared.closing.load(Ordering::SeqCst)
    }

    pub(crate) fn next_key(&self) -> u64 {
        self.shared.next_key.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn watch_asleep(&self) -> &AtomicBool {
        &self.shared.watch_asleep
    }

    /// Send the dispatcher a command with a reply channel and wait for the answer;
    /// `None` once the dispatcher has stopped. A command queued just as it stopped is
    /// never answered nor dropped (a bounded channel keeps what it holds while a handle
    /// of its sender lives), so the wait looks at `dispatcher_gone` now and then.
    pub(crate) fn ask<T>(&self, command: impl FnOnce(Sender<T>) -> Command) -> Option<T> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.dispatch(command(reply));
        loop {
            match answer.recv_timeout(Duration::from_millis(100)) {
                Ok(value) => return Some(value),
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return None,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    if self.shared.dispatcher_gone.load(Ordering::SeqCst) {
                        return answer.try_recv().ok();
                    }
                }
            }
        }
    }

    /// Hand a command to the dispatcher; after shutdown it is dropped.
    pub(crate) fn dispatch(&self, command: Command) {
        let _ = self.shared.commands.send(command);
    }

    /// Note a connection that is starting its handshake; `false` when closing.
    pub(crate) fn handshake_started(&self, key: u64, stream: &TcpStream) -> bool {
        let mut handshaking = lock(&self.shared.handshaking);
        match (handshaking.as_mut(), stream.try_clone()) {
            (Some(map), Ok(clone)) => {
                map.insert(key, clone);
                true
            }
            _ => false,
        }
    }

    pub(crate) fn handshake_ended(&self, key: u64) {
        if let Some(map) = lock(&self.shared.handshaking).as_mut() {
            map.remove(&key);
        }
    }

    /// Reserve a parked session for a resuming connection (a round trip to the
    /// dispatcher, during the handshake only).
    pub(crate) fn claim_session(&self, token: &str, namespace: &str) -> Option<resume::Claimed> {
        self.ask(|reply| Command::Claim {
            token: token.to_owned(),
            namespace: namespace.to_owned(),
            reply,
        })
        .flatten()
    }

    /// Hand a new connection to the dispatcher, unless the server is shutting down.
    pub(crate) fn register_connection(&self, conn: Arc<connection::Conn>) -> bool {
        let open = lock(&self.shared.registering);
        if *open {
            self.dispatch(Command::Connect(conn));
        }
        *open
    }

    /// Close the gate of `register_connection`.
    fn stop_registering(&self) {
        *lock(&self.shared.registering) = false;
    }

    /// Like `dispatch`, but never blocks: for wake-ups that may be dropped.
    pub(crate) fn try_dispatch(&self, command: Command) {
        let _ = self.shared.commands.try_send(command);
    }

    /// Start a thread that `close` will wait for (up to its deadline).
    pub(crate) fn spawn(
        &self,
        name: &str,
        stack_size: usize,
        f: impl FnOnce() + Send + 'static,
    ) -> io::Result<()> {
        let live = self
            .shared
            .live
            .enter()
            .ok_or_else(|| io::Error::other("server is closed"))?;
        let server = self.clone();
        thread::Builder::new()
            .name(name.to_owned())
            .stack_size(stack_size)
            .spawn(move || {
                let _live = live;
                server.mark_thread();
                drop(server);
                f()
            })
            .map(drop)
    }

    /// Log an error that concerns no single request and pass it to `on_error`.
    pub(crate) fn report(&self, error: Error) {
        warn_limited!("{error}");
        self.shared.hooks.error(&error);
    }
}

thread_local! {
    /// The server a thread belongs to (the address of its shared state), 0 for none.
    static SERVER_THREAD: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Whether `handle` is the calling thread's own (joining it would never return).
fn is_current(handle: &JoinHandle<()>) -> bool {
    handle.thread().id() == thread::current().id()
}

/// Wake an acceptor blocked in `accept()` on the listener `listener` is a handle of.
/// Shutting a listening socket down makes a blocked `accept` fail at once (Linux),
/// with no connection made: connecting to ourselves would need a free file
/// descriptor, which a server that ran out of them does not have. Elsewhere, or if
/// the shutdown fails, connect after all.
fn wake_acceptor(listener: TcpListener, addr: SocketAddr) {
    #[cfg(unix)]
    {
        let socket = TcpStream::from(std::os::fd::OwnedFd::from(listener));
        if socket.shutdown(std::net::Shutdown::Read).is_ok() {
            return;
        }
    }
    #[cfg(not(unix))]
    drop(listener);
    let _ = TcpStream::connect_timeout(&loopback(addr), Duration::from_secs(1));
}

/// The address to connect to in order to reach a listener bound to `addr`.
fn loopback(addr: SocketAddr) -> SocketAddr {
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        match addr {
            SocketAddr::V4(_) => addr.set_ip([127, 0, 0, 1].into()),
            SocketAddr::V6(_) => addr.set_ip(std::net::Ipv6Addr::LOCALHOST.into()),
        }
    }
    addr
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_acceptor_is_woken_without_a_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let waker = listener.try_clone().unwrap();
        let (tx, rx) = crossbeam_channel::bounded(1);
        thread::spawn(move || {
            let _ = tx.send(listener.accept().map(|_| ()));
        });
        wake_acceptor(waker, addr);
        let accepted = rx.recv_timeout(Duration::from_secs(10));
        assert!(
            matches!(accepted, Ok(Err(_))),
            "accept() was not woken, or was woken by a connection: {accepted:?}"
        );
    }
}
