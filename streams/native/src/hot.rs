//! The states a stage holds in memory between commits, and what the commit must write.
//!
//! Both stages keep the same bookkeeping: a capped cache of decoded states (the least
//! recently used leave first, a sixteenth at a time: one pass per many misses instead of an
//! ordered map kept per access), the keys touched since the last snapshot with the record
//! that routes each write, touched states pushed out before the commit could write them
//! ("aside": written by the commit, never at eviction, which would come before their outputs
//! are delivered), and the snapshot of the commit in flight while some of its states are not
//! serialised yet (copy on write: a state is serialised before the fold changes it again).

use std::collections::HashMap;

use ahash::RandomState;
use indexmap::IndexMap;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use pyo3::{PyClass, PyClassInitializer};

use crate::snapshot::{Held, Snapshot};
use crate::source_state::SourceState;
use crate::state::CallerState;

type Map<K, V> = HashMap<K, V, RandomState>;

/// A state type a snapshot can hold, read back from its stored bytes.
pub trait Stored: PyClass + Sized + Into<PyClassInitializer<Self>> {
    fn held(state: Py<Self>) -> Held;
    fn decode_stored(raw: &[u8]) -> Result<Self, String>;
}

impl Stored for CallerState {
    fn held(state: Py<Self>) -> Held {
        Held::Number(state)
    }

    fn decode_stored(raw: &[u8]) -> Result<Self, String> {
        CallerState::decode(raw)
    }
}

impl Stored for SourceState {
    fn held(state: Py<Self>) -> Held {
        Held::Source(state)
    }

    fn decode_stored(raw: &[u8]) -> Result<Self, String> {
        SourceState::decode(raw)
    }
}

pub struct HotCache<T: Stored> {
    cap: usize,
    map: Map<String, (Py<T>, u64)>,
    clock: u64,
    /// key -> the record its newest event came from (routes the state's write)
    dirty: IndexMap<String, Py<PyAny>, RandomState>,
    aside: Map<String, Py<T>>,
    frozen: Option<Py<Snapshot>>,
}

impl<T: Stored> HotCache<T> {
    pub fn new(cap: usize) -> HotCache<T> {
        HotCache { cap: cap.max(1), map: Map::default(), clock: 0, dirty: IndexMap::default(),
                   aside: Map::default(), frozen: None }
    }

    /// The key's state if it is in memory (now the most recently used), else None: the
    /// caller reads it from the store and [`HotCache::insert`]s it.
    pub fn take(&mut self, py: Python<'_>, key: &str) -> Option<Py<T>> {
        self.clock += 1;
        if let Some((state, used)) = self.map.get_mut(key) {
            *used = self.clock;
            return Some(state.clone_ref(py));
        }
        let state = self.aside.remove(key)?;
        self.insert(py, key, state.clone_ref(py));
        Some(state)
    }

    /// The key's state: in memory, else the bytes `load(key, ctx)` returns (the stage's
    /// callback: the snapshot being written, then the store) decoded, else `fresh()` when it
    /// has none (None or empty); in memory from now on either way.
    pub fn load(&mut self, py: Python<'_>, key: &str, ctx: &Py<PyAny>, load: &Py<PyAny>,
                fresh: impl FnOnce() -> T) -> PyResult<Py<T>> {
        if let Some(state) = self.take(py, key) {
            return Ok(state);
        }
        let raw = load.call1(py, (key, ctx))?;
        let raw = raw.bind(py);
        let st = if raw.is_none() || raw.cast::<PyBytes>()?.as_bytes().is_empty() {
            fresh()
        } else {
            T::decode_stored(raw.cast::<PyBytes>()?.as_bytes()).map_err(|e| {
                PyValueError::new_err(format!("stored state of {key}: {e}"))
            })?
        };
        let state = Py::new(py, st)?;
        self.insert(py, key, state.clone_ref(py));
        Ok(state)
    }

    pub fn insert(&mut self, py: Python<'_>, key: &str, state: Py<T>) {
        self.map.insert(key.to_string(), (state, self.clock));
        if self.map.len() > self.cap {
            self.evict_oldest(py);
        }
    }

    fn evict_oldest(&mut self, py: Python<'_>) {
        let n = (self.cap / 16).max(1).min(self.map.len());
        let mut ages: Vec<u64> = self.map.values().map(|(_, used)| *used).collect();
        let (_, cut, _) = ages.select_nth_unstable(n - 1);
        let cut = *cut;
        let (dirty, aside) = (&self.dirty, &mut self.aside);
        self.map.retain(|key, (state, used)| {
            if *used > cut {
                return true;
            }
            if dirty.contains_key(key) {
                aside.insert(key.clone(), state.clone_ref(py));
            }
            false
        });
    }

    /// The fold is about to change the key's state: serialise it first if the snapshot in
    /// flight still needs it as it is.
    pub fn before_change(&mut self, py: Python<'_>, key: &str) {
        if let Some(frozen) = &self.frozen {
            let mut snap = frozen.borrow_mut(py);
            snap.before_change(py, key);
            let finished = snap.all_encoded();
            drop(snap);
            if finished {
                self.frozen = None;
            }
        }
    }

    /// The key was folded into: its state goes into the next snapshot, routed by `ctx`.
    pub fn touch(&mut self, py: Python<'_>, key: &str, ctx: &Py<PyAny>) {
        match self.dirty.get_mut(key) {
            Some(slot) => *slot = ctx.clone_ref(py),
            None => {
                self.dirty.insert(key.to_string(), ctx.clone_ref(py));
            }
        }
    }

    /// Every touched state, as it is now, to be written through `put_many`; none is touched
    /// any more.
    pub fn snapshot(&mut self, py: Python<'_>, put_many: Py<PyAny>) -> PyResult<Py<Snapshot>> {
        let mut unencoded = IndexMap::with_capacity_and_hasher(self.dirty.len(),
                                                               RandomState::default());
        for (key, ctx) in self.dirty.drain(..) {
            let state = match self.map.get(&key) {
                Some((state, _)) => state.clone_ref(py),
                None => match self.aside.get(&key) {
                    Some(state) => state.clone_ref(py),
                    None => continue,
                },
            };
            unencoded.insert(key, (T::held(state), ctx));
        }
        self.aside.clear();
        let snap = Py::new(py, Snapshot::new(unencoded, put_many))?;
        self.frozen = Some(snap.clone_ref(py));
        Ok(snap)
    }

    /// The key's state if it is in memory, without touching it.
    pub fn cached(&self, py: Python<'_>, key: &str) -> Option<Py<T>> {
        self.map.get(key).map(|(s, _)| s.clone_ref(py))
            .or_else(|| self.aside.get(key).map(|s| s.clone_ref(py)))
    }

    /// Drop the states `idle` says may go (never a touched one). Returns how many.
    pub fn sweep(&mut self, py: Python<'_>, idle: impl Fn(&T) -> bool) -> usize {
        let before = self.map.len();
        let dirty = &self.dirty;
        self.map.retain(|key, (state, _)| dirty.contains_key(key) || !idle(&state.borrow(py)));
        before - self.map.len()
    }

    /// Forget everything held: after a rebalance the store is the truth again.
    pub fn forget(&mut self) {
        self.map.clear();
        self.aside.clear();
        self.dirty.clear();
        self.frozen = None;
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.map.keys()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn touched(&self) -> usize {
        self.dirty.len()
    }

    pub fn aside_len(&self) -> usize {
        self.aside.len()
    }
}
