//! Connection limits: sessions open in total and per client address (every
//! protocol), and per user once logged in (IMAP's
//! `imap.max_connections_per_user`). A place is held by a guard and given
//! back when the guard drops, however the session ends.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Open sessions in total and per key.
pub struct Count<K: Eq + Hash + Clone> {
    inner: Arc<Mutex<(usize, HashMap<K, usize>)>>,
}

impl<K: Eq + Hash + Clone> Default for Count<K> {
    fn default() -> Self {
        Count {
            inner: Default::default(),
        }
    }
}

impl<K: Eq + Hash + Clone> Clone for Count<K> {
    fn clone(&self) -> Self {
        Count {
            inner: self.inner.clone(),
        }
    }
}

/// One open session's place in a count; released on drop.
pub struct Slot<K: Eq + Hash + Clone> {
    count: Count<K>,
    key: K,
}

impl<K: Eq + Hash + Clone> Count<K> {
    /// Takes a place for `key` unless `total` or `per_key` is reached.
    pub fn try_take(&self, key: K, total: usize, per_key: usize) -> Option<Slot<K>> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let here = g.1.get(&key).copied().unwrap_or(0);
        if g.0 >= total || here >= per_key {
            return None;
        }
        g.0 += 1;
        g.1.insert(key.clone(), here + 1);
        Some(Slot {
            count: self.clone(),
            key,
        })
    }

    /// Open sessions in total.
    pub fn total(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).0
    }
}

impl<K: Eq + Hash + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut g = self.count.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.0 = g.0.saturating_sub(1);
        if let Some(n) = g.1.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                g.1.remove(&self.key);
            }
        }
    }
}

/// Sessions per client address.
pub type ConnectionCount = Count<IpAddr>;

/// Sessions per logged-in user.
pub type UserCount = Count<String>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_given_back() {
        let c = UserCount::default();
        let a = c.try_take("alice".into(), 3, 2).unwrap();
        let _b = c.try_take("alice".into(), 3, 2).unwrap();
        assert!(c.try_take("alice".into(), 3, 2).is_none());
        let _x = c.try_take("bob".into(), 3, 2).unwrap();
        assert!(c.try_take("carol".into(), 3, 2).is_none());
        drop(a);
        assert_eq!(c.total(), 2);
        assert!(c.try_take("alice".into(), 3, 2).is_some());
    }
}
