//! Which connection holds which socket id, per namespace: socket ids are unique among
//! the connections of a namespace (handshakes in progress included). Owned by the
//! dispatcher; a leaf module.

use std::collections::HashMap;

/// (namespace, socket id) to the key of the connection holding it.
#[derive(Default)]
pub(crate) struct SocketIds {
    held: HashMap<(String, String), u64>,
}

impl SocketIds {
    /// Reserve `id` in `namespace` for connection `key`, if no other connection holds
    /// it and `parked_free` (asked only then) says no parked session keeps it.
    pub(crate) fn reserve(
        &mut self,
        namespace: &str,
        id: &str,
        key: u64,
        parked_free: impl FnOnce() -> bool,
    ) -> bool {
        let entry = (namespace.to_owned(), id.to_owned());
        let free = self.held.get(&entry).is_none_or(|k| *k == key) && parked_free();
        if free {
            self.held.insert(entry, key);
        }
        free
    }

    /// Connection `key` holds `id` (a generated or resumed one, which needs no
    /// reservation: no open connection can hold it).
    pub(crate) fn hold(&mut self, namespace: &str, id: &str, key: u64) {
        self.held.insert((namespace.to_owned(), id.to_owned()), key);
    }

    /// Free `id`, if connection `key` still holds it.
    pub(crate) fn release(&mut self, namespace: &str, id: &str, key: u64) {
        let entry = (namespace.to_owned(), id.to_owned());
        if self.held.get(&entry) == Some(&key) {
            self.held.remove(&entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_held_by_one_connection_of_a_namespace_until_it_releases_it() {
        let mut ids = SocketIds::default();
        assert!(ids.reserve("/", "a", 1, || true));
        assert!(!ids.reserve("/", "a", 2, || true), "taken");
        assert!(ids.reserve("/chat", "a", 2, || true), "another namespace");
        assert!(
            ids.reserve("/", "a", 1, || true),
            "its holder may ask again"
        );
        ids.release("/", "a", 2);
        assert!(
            !ids.reserve("/", "a", 3, || true),
            "released by a non-holder"
        );
        ids.release("/", "a", 1);
        assert!(ids.reserve("/", "a", 3, || true), "released by its holder");
        assert!(ids.held.len() == 2);
    }

    #[test]
    fn a_parked_session_can_keep_an_id_and_held_ids_count_too() {
        let mut ids = SocketIds::default();
        assert!(
            !ids.reserve("/", "p", 1, || false),
            "a parked session keeps it"
        );
        assert!(ids.held.is_empty());
        ids.hold("/", "g", 1);
        let mut asked = false;
        assert!(!ids.reserve("/", "g", 2, || {
            asked = true;
            true
        }));
        assert!(
            !asked,
            "parked sessions asked about an id a connection holds"
        );
        ids.release("/", "g", 1);
        assert!(ids.held.is_empty());
    }
}
