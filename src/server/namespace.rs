//! The per-namespace API: methods, events, auth, clients.

use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::dispatcher::Command;
use super::registry::{NamespaceTable, RESERVED};
use super::{Context, Server};
use crate::error::{Error, RpcError, codes};
use crate::protocol::{Codec, Params, event_params};

/// One namespace of a server, chosen by the URL path clients connect to. Methods,
/// events, login and clients of one namespace are invisible to the others.
///
/// ```
/// use wsrpc::{Server, RpcError};
/// let server = Server::bind("127.0.0.1:0").unwrap();
/// let chat = server.namespace("/chat");
/// chat.register("sum", |n: Vec<i64>, _| Ok::<_, RpcError>(n.iter().sum::<i64>()));
/// chat.event("message");
/// chat.emit("message", serde_json::json!({"text": "hi"})).unwrap();
/// assert_eq!(chat.event_list(), ["message"]);
/// server.close();
/// ```
#[derive(Clone, Debug)]
pub struct Namespace {
    server: Server,
    path: Arc<str>,
}

impl Namespace {
    pub(crate) fn new(server: Server, path: &str) -> Self {
        let path: Arc<str> = match path {
            "" => "/".into(),
            p if p.starts_with('/') => p.into(),
            p => format!("/{p}").into(),
        };
        // Nothing is written until something is registered: a handle alone (as `emit`
        // and `clients` make) must neither create a namespace nor invalidate the
        // tables every connection caches.
        Namespace { server, path }
    }

    /// The URL path of this namespace.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Register a method. The handler gets the params deserialized into `P` (a struct,
    /// a tuple, a `Vec`, or `serde_json::Value` for anything) and returns a serializable
    /// value or an [`RpcError`]. `()` and `Option<T>` take "no params" in every form a
    /// client sends it: absent, `null`, `[]` and `{}` (an empty array or object still
    /// reads as itself into a type that takes it, such as a `Vec`). Params that do not
    /// fit `P` get `-32602 Invalid params`; a panic gets `-32603 Internal error`.
    ///
    /// Registering a name again replaces the handler and keeps the rest: a protected
    /// method stays protected, and [`allow_raw_values`](MethodHandle::allow_raw_values)
    /// stays on. (rpc-websockets makes it public again; here a method only becomes
    /// public when told to, with [`MethodHandle::public`].) For a method that needs a
    /// login, use [`register_protected`](Self::register_protected): `register(..)
    /// .protected()` leaves a moment in which a new method is public.
    ///
    /// ```
    /// # let server = wsrpc::Server::bind("127.0.0.1:0").unwrap();
    /// use wsrpc::RpcError;
    /// #[derive(serde::Deserialize)]
    /// struct Greet { name: String }
    /// server.register("greet", |p: Greet, _| Ok::<_, RpcError>(format!("Hello, {}!", p.name)));
    /// server.register("add", |(a, b): (i64, i64), _| Ok::<_, RpcError>(a + b));
    /// server.register("whoami", |_: (), ctx| Ok::<_, RpcError>(ctx.socket_id().to_owned()));
    /// # server.close();
    /// ```
    ///
    /// # Panics
    /// If `name` is one of the protocol's own methods (`rpc.on`, `rpc.off`, `rpc.login`,
    /// `__listMethods`).
    pub fn register<P, R, F>(&self, name: &str, handler: F) -> MethodHandle
    where
        P: DeserializeOwned,
        R: Serialize,
        F: Fn(P, &Context<'_>) -> Result<R, RpcError> + Send + Sync + 'static,
    {
        self.register_as(name, handler, None)
    }

    /// Register a method only logged-in clients may call (others get `-32605 Method
    /// forbidden`), protected from the moment it exists: in one step, so no client can
    /// call it in between. Registering a public name this way replaces it and protects
    /// it in the same step. Otherwise as [`register`](Self::register).
    ///
    /// ```
    /// # let server = wsrpc::Server::bind("127.0.0.1:0").unwrap();
    /// use wsrpc::RpcError;
    /// server.set_auth(|token: String, _| Ok(token == "let me in"));
    /// server.register_protected("admin", |_: (), _| Ok::<_, RpcError>("secret"));
    /// # server.close();
    /// ```
    ///
    /// # Panics
    /// As [`register`](Self::register).
    pub fn register_protected<P, R, F>(&self, name: &str, handler: F) -> MethodHandle
    where
        P: DeserializeOwned,
        R: Serialize,
        F: Fn(P, &Context<'_>) -> Result<R, RpcError> + Send + Sync + 'static,
    {
        self.register_as(name, handler, Some(true))
    }

    /// Register in one registry update; `protected: None` keeps what the name had.
    fn register_as<P, R, F>(&self, name: &str, handler: F, protected: Option<bool>) -> MethodHandle
    where
        P: DeserializeOwned,
        R: Serialize,
        F: Fn(P, &Context<'_>) -> Result<R, RpcError> + Send + Sync + 'static,
    {
        assert!(
            !RESERVED.contains(&name),
            "'{name}' is a built-in method of the protocol and cannot be registered"
        );
        let run = move |params: Params<'_>, ctx: &Context<'_>, codec: Codec| {
            let result = handler(params.parse::<P>()?, ctx)?;
            codec.encode_value(&result).map_err(|msg| {
                RpcError::new(codes::INTERNAL_ERROR, "Internal error").with_data(msg)
            })
        };
        self.update(|t| t.add_method_as(name, Arc::new(run), protected));
        MethodHandle {
            ns: self.clone(),
            name: name.to_owned(),
        }
    }

    /// Declare an event clients may subscribe to (`rpc.on`). Declaring it again returns
    /// the same event, protected or not as it was.
    pub fn event(&self, name: &str) -> EventHandle {
        self.event_as(name, None)
    }

    /// Declare an event only logged-in clients may subscribe to (others get `-32606
    /// Event forbidden`), protected from the moment it exists: `event(..).protected()`
    /// leaves a moment in which anyone may subscribe. Declaring a public event again
    /// this way protects it.
    ///
    /// ```
    /// # let server = wsrpc::Server::bind("127.0.0.1:0").unwrap();
    /// server.event_protected("audit");
    /// server.emit("audit", serde_json::json!({"user": "foo"})).unwrap();
    /// # server.close();
    /// ```
    pub fn event_protected(&self, name: &str) -> EventHandle {
        self.event_as(name, Some(true))
    }

    fn event_as(&self, name: &str, protected: Option<bool>) -> EventHandle {
        self.update(|t| t.add_event_as(name, protected));
        EventHandle {
            ns: self.clone(),
            name: name.to_owned(),
        }
    }

    /// Change this namespace's table of methods, events and auth.
    fn update<R>(&self, change: impl FnOnce(&mut NamespaceTable) -> R) -> R {
        self.server.registry().update(&self.path, change)
    }

    /// Send event `name` to the clients of this namespace that subscribed to it.
    /// Arrays and objects are sent as the event's params as they are, anything else is
    /// wrapped in an array (`5` is sent as `[5]`), and `()` as `[]`. The event is
    /// encoded once, whatever the number of subscribers; a subscriber whose outgoing
    /// queue is full is disconnected rather than allowed to hold up the others.
    pub fn emit(&self, name: &str, value: impl Serialize) -> Result<(), Error> {
        let value = serde_json::to_value(value).map_err(Error::codec)?;
        if self.server.is_closing() {
            return Err(Error::Closed);
        }
        self.server.dispatch(Command::Emit {
            namespace: self.path.to_string(),
            event: name.to_owned(),
            params: event_params(value),
        });
        Ok(())
    }

    /// The names of this namespace's events, in the order they were declared.
    pub fn event_list(&self) -> Vec<String> {
        self.server
            .registry()
            .namespace(&self.path)
            .map(|t| t.event_names())
            .unwrap_or_default()
    }

    /// Set the handler of `rpc.login`: it gets the login params as `P` and answers
    /// whether they are good. `true` logs the connection in to this namespace, which
    /// opens its protected methods and events to it.
    ///
    /// ```
    /// # let server = wsrpc::Server::bind("127.0.0.1:0").unwrap();
    /// #[derive(serde::Deserialize)]
    /// struct Login { username: String, password: String }
    /// server.set_auth(|l: Login, _| Ok(l.username == "foo" && l.password == "bar"));
    /// # server.close();
    /// ```
    pub fn set_auth<P, F>(&self, handler: F)
    where
        P: DeserializeOwned,
        F: Fn(P, &Context<'_>) -> Result<bool, RpcError> + Send + Sync + 'static,
    {
        let auth = move |params: Params<'_>, ctx: &Context<'_>| handler(params.parse::<P>()?, ctx);
        self.update(|t| t.set_auth(Arc::new(auth)));
    }

    /// Socket ids of the clients connected to this namespace now.
    pub fn clients(&self) -> Vec<String> {
        self.server
            .ask(|reply| Command::Clients {
                namespace: self.path.to_string(),
                reply,
            })
            .unwrap_or_default()
    }

    /// Remove this namespace: its methods and events are forgotten, and its clients get
    /// a close frame with code 1001 and the reason "namespace closed". Clients that
    /// connect to the path later find an empty namespace.
    pub fn close(&self) {
        self.server.registry().remove(&self.path);
        self.server.ask(|done| Command::CloseNamespace {
            namespace: self.path.to_string(),
            done,
        });
    }
}

/// A registered method, to make it protected (login required) or public again later.
/// To register a method protected from the start, use
/// [`Namespace::register_protected`].
#[derive(Debug)]
pub struct MethodHandle {
    ns: Namespace,
    name: String,
}

impl MethodHandle {
    /// Only logged-in clients may call it from now on; others get `-32605 Method
    /// forbidden`.
    pub fn protected(&self) -> &Self {
        self.set(true)
    }

    /// Anyone may call it (the default for a new method; registering it again keeps
    /// what it was).
    pub fn public(&self) -> &Self {
        self.set(false)
    }

    /// Let MessagePack callers send values JSON cannot carry (binary data, extension
    /// types, maps with keys that are not strings): the handler's params type is then
    /// deserialized straight from MessagePack, so it can hold, say,
    /// `serde_bytes::ByteBuf`. Without this such params get `-32602 Invalid params`
    /// naming what JSON cannot carry. JSON callers are not affected.
    pub fn allow_raw_values(&self) -> &Self {
        self.ns.update(|t| t.allow_raw_values(&self.name, true));
        self
    }

    fn set(&self, protected: bool) -> &Self {
        self.ns.update(|t| t.protect_method(&self.name, protected));
        self
    }
}

/// A declared event, to make it protected (login required to subscribe) or public
/// later. To declare one protected from the start, use [`Namespace::event_protected`].
#[derive(Debug)]
pub struct EventHandle {
    ns: Namespace,
    name: String,
}

impl EventHandle {
    /// Only logged-in clients may subscribe; others get `-32606 Event forbidden`.
    pub fn protected(&self) -> &Self {
        self.set(true)
    }

    /// Anyone may subscribe (the default).
    pub fn public(&self) -> &Self {
        self.set(false)
    }

    fn set(&self, protected: bool) -> &Self {
        self.ns.update(|t| t.protect_event(&self.name, protected));
        self
    }
}
