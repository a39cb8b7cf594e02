//! Methods, events and auth handlers of every namespace.
//!
//! Written rarely (at setup), read on every call. Writers take a mutex and publish a
//! new immutable table; each connection keeps an `Arc` of its namespace's table and
//! looks at one atomic version number per frame to know when to fetch a new one, so the
//! hot path takes no lock and shares no written cache line.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::Context;
use crate::error::RpcError;
use crate::lock;
use crate::protocol::{Codec, Encoded, Params};

/// A registered method, its params and result types erased.
pub(crate) type MethodFn =
    dyn Fn(Params<'_>, &Context<'_>, Codec) -> Result<Encoded, RpcError> + Send + Sync;

/// A namespace's `rpc.login` handler.
pub(crate) type AuthFn = dyn Fn(Params<'_>, &Context<'_>) -> Result<bool, RpcError> + Send + Sync;

/// Names a user may not register: the protocol's own methods.
pub(crate) const RESERVED: [&str; 4] = ["rpc.on", "rpc.off", "rpc.login", "__listMethods"];

#[derive(Clone)]
pub(crate) struct Method {
    pub run: Arc<MethodFn>,
    pub protected: bool,
    /// Accepts MessagePack values JSON cannot carry.
    pub raw_values: bool,
}

/// One namespace as connections see it.
#[derive(Clone, Default)]
pub(crate) struct NamespaceTable {
    methods: HashMap<String, Method>,
    /// Method names in registration order, for `__listMethods`.
    method_order: Vec<String>,
    /// Event name to "protected".
    events: HashMap<String, bool>,
    event_order: Vec<String>,
    auth: Option<Arc<AuthFn>>,
}

impl NamespaceTable {
    /// Nothing registered: no methods, events or login.
    pub(crate) fn is_empty(&self) -> bool {
        self.methods.is_empty() && self.events.is_empty() && self.auth.is_none()
    }

    pub(crate) fn method(&self, name: &str) -> Option<&Method> {
        self.methods.get(name)
    }

    pub(crate) fn auth(&self) -> Option<&Arc<AuthFn>> {
        self.auth.as_ref()
    }

    /// `Some(protected)` when the event exists.
    pub(crate) fn event(&self, name: &str) -> Option<bool> {
        self.events.get(name).copied()
    }

    pub(crate) fn event_names(&self) -> Vec<String> {
        self.event_order.clone()
    }

    /// What `__listMethods` answers: itself first, then every method in the order it
    /// was registered, `rpc.login` where `set_auth` put it.
    pub(crate) fn method_names(&self) -> Vec<String> {
        std::iter::once("__listMethods".to_owned())
            .chain(self.method_order.iter().cloned())
            .collect()
    }

    /// Add a method, or replace the one of that name keeping its protection.
    #[cfg(test)]
    pub(crate) fn add_method(&mut self, name: &str, run: Arc<MethodFn>) {
        self.add_method_as(name, run, None);
    }

    /// Add a method, or replace the one of that name: `protected` says whether it needs
    /// a login, `None` keeping what the name had (public for a new name). A replaced
    /// method also keeps its raw-values option and its place in `__listMethods`.
    /// (rpc-websockets makes a registered-again method public: here a protected method
    /// must never become public without being told to.)
    pub(crate) fn add_method_as(
        &mut self,
        name: &str,
        run: Arc<MethodFn>,
        protected: Option<bool>,
    ) {
        let old = self.methods.get(name);
        let method = Method {
            run,
            protected: protected.unwrap_or(old.is_some_and(|m| m.protected)),
            raw_values: old.is_some_and(|m| m.raw_values),
        };
        if self.methods.insert(name.to_owned(), method).is_none() {
            self.method_order.push(name.to_owned());
        }
    }

    pub(crate) fn protect_method(&mut self, name: &str, protected: bool) {
        if let Some(method) = self.methods.get_mut(name) {
            method.protected = protected;
        }
    }

    pub(crate) fn allow_raw_values(&mut self, name: &str, allow: bool) {
        if let Some(method) = self.methods.get_mut(name) {
            method.raw_values = allow;
        }
    }

    /// Declare an event, or keep the one of that name as it is.
    #[cfg(test)]
    pub(crate) fn add_event(&mut self, name: &str) {
        self.add_event_as(name, None);
    }

    /// Declare an event: `protected` says whether subscribing needs a login, `None`
    /// keeping what the event had (public for a new one).
    pub(crate) fn add_event_as(&mut self, name: &str, protected: Option<bool>) {
        match self.events.get_mut(name) {
            Some(flag) => *flag = protected.unwrap_or(*flag),
            None => {
                self.events
                    .insert(name.to_owned(), protected.unwrap_or(false));
                self.event_order.push(name.to_owned());
            }
        }
    }

    pub(crate) fn protect_event(&mut self, name: &str, protected: bool) {
        if let Some(flag) = self.events.get_mut(name) {
            *flag = protected;
        }
    }

    pub(crate) fn set_auth(&mut self, auth: Arc<AuthFn>) {
        self.auth = Some(auth);
        if !self.method_order.iter().any(|m| m == "rpc.login") {
            self.method_order.push("rpc.login".to_owned());
        }
    }
}

type Tables = HashMap<String, Arc<NamespaceTable>>;

#[derive(Default)]
pub(crate) struct Registry {
    tables: Mutex<Arc<Tables>>,
    version: AtomicU64,
}

impl Registry {
    /// Change one namespace (creating it), then publish.
    pub(crate) fn update<R>(&self, ns: &str, change: impl FnOnce(&mut NamespaceTable) -> R) -> R {
        let mut tables = lock(&self.tables);
        let mut next: Tables = (**tables).clone();
        let table = Arc::make_mut(next.entry(ns.to_owned()).or_default());
        let out = change(table);
        *tables = Arc::new(next);
        self.version.fetch_add(1, Ordering::Release);
        out
    }

    /// Forget a namespace; returns whether it existed.
    pub(crate) fn remove(&self, ns: &str) -> bool {
        let mut tables = lock(&self.tables);
        if !tables.contains_key(ns) {
            return false;
        }
        let mut next: Tables = (**tables).clone();
        next.remove(ns);
        *tables = Arc::new(next);
        self.version.fetch_add(1, Ordering::Release);
        true
    }

    /// Drop every handler (they may hold the server, which holds them).
    pub(crate) fn clear(&self) {
        *lock(&self.tables) = Arc::default();
        self.version.fetch_add(1, Ordering::Release);
    }

    pub(crate) fn namespace(&self, ns: &str) -> Option<Arc<NamespaceTable>> {
        lock(&self.tables).get(ns).cloned()
    }

    pub(crate) fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }
}

/// A connection's cached table of its namespace.
pub(crate) struct View {
    version: u64,
    table: Arc<NamespaceTable>,
}

impl View {
    pub(crate) fn new(registry: &Registry, ns: &str) -> Self {
        let version = registry.version();
        View {
            version,
            table: registry.namespace(ns).unwrap_or_default(),
        }
    }

    /// The table, fetched again only if the registry changed since last time.
    pub(crate) fn current(&mut self, registry: &Registry, ns: &str) -> &Arc<NamespaceTable> {
        if registry.version() != self.version {
            *self = View::new(registry, ns);
        }
        &self.table
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nop() -> Arc<MethodFn> {
        Arc::new(|_, _, _| Ok(Encoded(b"null".to_vec())))
    }

    #[test]
    fn list_methods_keeps_registration_order_and_login() {
        let registry = Registry::default();
        registry.update("/", |t| t.add_method("b", nop()));
        registry.update("/", |t| t.add_method("a", nop()));
        registry.update("/", |t| t.set_auth(Arc::new(|_, _| Ok(true))));
        registry.update("/", |t| t.add_method("b", nop()));
        let table = registry.namespace("/").unwrap();
        assert_eq!(
            table.method_names(),
            ["__listMethods", "b", "a", "rpc.login"]
        );
    }

    fn method(registry: &Registry, name: &str) -> Method {
        registry
            .namespace("/")
            .unwrap()
            .method(name)
            .unwrap()
            .clone()
    }

    #[test]
    fn registering_again_keeps_protection_and_raw_values_unless_told() {
        let registry = Registry::default();
        registry.update("/", |t| t.add_method_as("m", nop(), Some(true)));
        assert!(method(&registry, "m").protected, "protected from the start");
        registry.update("/", |t| t.allow_raw_values("m", true));
        registry.update("/", |t| t.add_method("m", nop()));
        let again = method(&registry, "m");
        assert!(
            again.protected && again.raw_values,
            "registering again changed it"
        );
        registry.update("/", |t| t.add_method_as("m", nop(), Some(false)));
        let public = method(&registry, "m");
        assert!(!public.protected && public.raw_values);
        registry.update("/", |t| t.add_method_as("m", nop(), Some(true)));
        assert!(method(&registry, "m").protected);
        registry.update("/", |t| t.add_method("n", nop()));
        assert!(!method(&registry, "n").protected, "a new name is public");
    }

    #[test]
    fn declaring_an_event_again_keeps_its_protection_unless_told() {
        let registry = Registry::default();
        let event = |name| registry.namespace("/").unwrap().event(name);
        registry.update("/", |t| t.add_event_as("e", Some(true)));
        assert_eq!(event("e"), Some(true));
        registry.update("/", |t| t.add_event("e"));
        assert_eq!(event("e"), Some(true));
        registry.update("/", |t| t.add_event_as("e", Some(false)));
        assert_eq!(event("e"), Some(false));
        registry.update("/", |t| t.add_event("f"));
        assert_eq!(event("f"), Some(false));
        assert_eq!(registry.namespace("/").unwrap().event_names(), ["e", "f"]);
    }

    #[test]
    fn a_view_sees_changes_after_the_version_moves() {
        let registry = Registry::default();
        let mut view = View::new(&registry, "/chat");
        assert!(view.current(&registry, "/chat").event("x").is_none());
        registry.update("/chat", |t| t.add_event("x"));
        assert_eq!(view.current(&registry, "/chat").event("x"), Some(false));
        registry.update("/chat", |t| t.protect_event("x", true));
        assert_eq!(view.current(&registry, "/chat").event("x"), Some(true));
        assert!(registry.remove("/chat"));
        assert!(view.current(&registry, "/chat").event("x").is_none());
    }
}
