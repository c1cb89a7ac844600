//! The object store: one global resourceVersion counter, a bounded window of changes for watches and consistent
//! paginated lists, and a broadcast of every change.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::status::ApiError;
use crate::validate::Allocators;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjKey {
    pub storage: &'static str,
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeType {
    Added,
    Modified,
    Deleted,
}

/// One committed change. `object` is the new state (for deletions: the last state, stamped with the deletion's
/// resourceVersion); `prev` the state before.
#[derive(Debug)]
pub struct Change {
    pub rv: u64,
    pub change: ChangeType,
    pub key: ObjKey,
    pub object: Arc<Value>,
    pub prev: Option<Arc<Value>>,
}

/// What a watcher receives: a change, or the end of every open watch.
#[derive(Debug, Clone)]
pub enum Broadcast {
    Change(Arc<Change>),
}

pub struct Store {
    pub rv: u64,
    pub objects: BTreeMap<ObjKey, Arc<Value>>,
    pub history: VecDeque<Arc<Change>>,
    pub window: usize,
    /// Every change with a resourceVersion above this one is still in `history`.
    pub oldest: u64,
    pub tx: broadcast::Sender<Broadcast>,
    /// Storages that have been listed (or watched from scratch) since the last restart; until then a watch that
    /// names a resourceVersion from before the restart is answered with 410.
    pub restarted: bool,
    /// The highest resourceVersion handed out before the last restart.
    pub pre_restart_max: u64,
    pub listed_since_restart: HashSet<&'static str>,
    pub alloc: Allocators,
}

pub fn rv_of(obj: &Value) -> u64 {
    obj.pointer("/metadata/resourceVersion").and_then(Value::as_str).and_then(|s| s.parse().ok()).unwrap_or(0)
}

fn set_rv(obj: &mut Value, rv: u64) {
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.insert("resourceVersion".to_string(), json!(rv.to_string()));
    }
}

impl Store {
    pub fn new(window: usize) -> Self {
        let (tx, _) = broadcast::channel(window.clamp(4096, 1 << 17));
        Store {
            rv: 0,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            window: window.max(1),
            oldest: 0,
            tx,
            restarted: false,
            pre_restart_max: 0,
            listed_since_restart: HashSet::new(),
            alloc: Allocators::default(),
        }
    }

    pub fn get(&self, key: &ObjKey) -> Option<Arc<Value>> {
        self.objects.get(key).cloned()
    }

    fn record(&mut self, change: ChangeType, key: ObjKey, object: Arc<Value>, prev: Option<Arc<Value>>) {
        let c = Arc::new(Change { rv: self.rv, change, key, object, prev });
        self.history.push_back(c.clone());
        while self.history.len() > self.window {
            if let Some(old) = self.history.pop_front() {
                self.oldest = old.rv;
            }
        }
        let _ = self.tx.send(Broadcast::Change(c));
    }

    /// Stores a new or changed object, stamping the next resourceVersion. Returns the stored object.
    pub fn put(&mut self, key: ObjKey, mut obj: Value) -> Arc<Value> {
        self.rv += 1;
        set_rv(&mut obj, self.rv);
        let obj = Arc::new(obj);
        let prev = self.objects.insert(key.clone(), obj.clone());
        let change = if prev.is_some() { ChangeType::Modified } else { ChangeType::Added };
        self.record(change, key, obj.clone(), prev);
        obj
    }

    /// Removes an object; the returned last state carries the deletion's resourceVersion.
    pub fn delete(&mut self, key: &ObjKey) -> Option<Arc<Value>> {
        let prev = self.objects.remove(key)?;
        self.rv += 1;
        let mut last = (*prev).clone();
        set_rv(&mut last, self.rv);
        let last = Arc::new(last);
        self.record(ChangeType::Deleted, key.clone(), last.clone(), Some(prev));
        Some(last)
    }

    /// The objects of one storage as they were at `rv` (which must be within the window), in key order.
    pub fn state_at(&self, storage: &str, rv: u64) -> Result<BTreeMap<ObjKey, Arc<Value>>, ApiError> {
        // A version from before a restart (beyond the counter) is as unknown as a compacted one.
        if rv < self.oldest || rv > self.rv {
            return Err(ApiError::too_old(rv, self.oldest));
        }
        let mut state: BTreeMap<ObjKey, Arc<Value>> =
            self.objects.iter().filter(|(k, _)| k.storage == storage).map(|(k, v)| (k.clone(), v.clone())).collect();
        for c in self.history.iter().rev() {
            if c.rv <= rv {
                break;
            }
            if c.key.storage != storage {
                continue;
            }
            match (&c.change, &c.prev) {
                (ChangeType::Added, _) => {
                    state.remove(&c.key);
                }
                (_, Some(prev)) => {
                    state.insert(c.key.clone(), prev.clone());
                }
                (_, None) => {}
            }
        }
        Ok(state)
    }

    /// Changes after `rv` still in the window, or 410 when some were compacted away.
    pub fn changes_since(&self, rv: u64) -> Result<Vec<Arc<Change>>, ApiError> {
        if rv < self.oldest {
            return Err(ApiError::too_old(rv, self.oldest));
        }
        Ok(self.history.iter().filter(|c| c.rv > rv).cloned().collect())
    }

    /// Forgets history and renumbers every object from a reset counter: resourceVersions handed out before are
    /// unknown from now on.
    pub fn restart(&mut self) {
        self.pre_restart_max = self.pre_restart_max.max(self.rv);
        self.rv = 0;
        let keys: Vec<ObjKey> = self.objects.keys().cloned().collect();
        for k in keys {
            self.rv += 1;
            if let Some(o) = self.objects.get_mut(&k) {
                let mut v = (**o).clone();
                set_rv(&mut v, self.rv);
                *o = Arc::new(v);
            }
        }
        self.history.clear();
        self.oldest = self.rv;
        self.restarted = true;
        self.listed_since_restart.clear();
    }

    /// Drops the oldest changes so that only those after `rv` stay (a compaction).
    pub fn compact(&mut self, rv: u64) {
        while self.history.front().is_some_and(|c| c.rv <= rv) {
            if let Some(c) = self.history.pop_front() {
                self.oldest = c.rv;
            }
        }
        self.oldest = self.oldest.max(rv.min(self.rv));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> ObjKey {
        ObjKey { storage: "services", namespace: "default".into(), name: name.into() }
    }

    fn obj(name: &str, v: i64) -> Value {
        json!({"metadata": {"name": name, "namespace": "default"}, "spec": {"v": v}})
    }

    #[test]
    fn resource_versions_are_global_and_monotonic() {
        let mut s = Store::new(100);
        let a = s.put(key("a"), obj("a", 1));
        let b = s.put(key("b"), obj("b", 1));
        let a2 = s.put(key("a"), obj("a", 2));
        assert_eq!((rv_of(&a), rv_of(&b), rv_of(&a2)), (1, 2, 3));
        let gone = s.delete(&key("b")).unwrap();
        assert_eq!(rv_of(&gone), 4);
        assert_eq!(s.changes_since(2).unwrap().len(), 2);
    }

    #[test]
    fn state_at_an_older_version() {
        let mut s = Store::new(100);
        s.put(key("a"), obj("a", 1));
        s.put(key("b"), obj("b", 1));
        s.put(key("a"), obj("a", 2));
        s.delete(&key("b"));
        s.put(key("c"), obj("c", 1));
        let at2 = s.state_at("services", 2).unwrap();
        let names: Vec<&str> = at2.keys().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(at2[&key("a")]["spec"]["v"], 1);
    }

    #[test]
    fn window_compaction_gives_410() {
        let mut s = Store::new(3);
        for i in 0..10 {
            s.put(key("a"), obj("a", i));
        }
        assert_eq!(s.oldest, 7);
        let e = s.changes_since(5).unwrap_err();
        assert_eq!(e.code, 410);
        assert_eq!(e.reason, "Expired");
        assert_eq!(e.message, "too old resource version: 5 (7)");
        assert_eq!(s.changes_since(7).unwrap().len(), 3);
        assert_eq!(s.state_at("services", 4).unwrap_err().code, 410);
    }

    #[test]
    fn restart_renumbers_and_forgets() {
        let mut s = Store::new(100);
        for i in 0..5 {
            s.put(key(&format!("o{i}")), obj("x", i));
        }
        s.restart();
        assert_eq!(s.rv, 5);
        assert!(s.history.is_empty());
        assert_eq!(s.changes_since(3).unwrap_err().code, 410);
    }
}
