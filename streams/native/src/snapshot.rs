//! A commit's snapshot of touched states, kept natively for both stages.

use std::collections::HashMap;

use ahash::RandomState;
use indexmap::IndexMap;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use crate::source_state::SourceState;
use crate::state::CallerState;

type Map<K, V> = HashMap<K, V, RandomState>;

/// A state held by a snapshot until it is serialised.
pub enum Held {
    Number(Py<CallerState>),
    Source(Py<SourceState>),
}

impl Held {
    fn encode(&self, py: Python<'_>, out: &mut Vec<u8>) {
        match self {
            Held::Number(st) => st.borrow(py).encode(out),
            Held::Source(st) => st.borrow(py).encode(out),
        }
    }
}

/// The states of a commit's snapshot (`streams.microbatch.StateWrites` is its Python twin):
/// serialised as late as their content allows, written in turns after the commit's outputs
/// are delivered, readable until then. Kept here so a snapshot of many thousand states is one
/// object, not a Python tuple and bytes per state.
#[pyclass(module = "streams._native")]
pub struct Snapshot {
    /// serialised, in the order they are written
    entries: Vec<(String, Vec<u8>, Py<PyAny>)>,
    /// not serialised yet: unchanged since the snapshot, so their state now is their state then
    /// (in no order that matters: taken from the end, removed by swapping)
    unencoded: IndexMap<String, (Held, Py<PyAny>), RandomState>,
    /// How many are written.
    #[pyo3(get)]
    written: usize,
    /// number -> its entry, for those serialised and not written yet
    pending: Map<String, usize>,
    put_many: Py<PyAny>,
}

impl Snapshot {
    pub fn new(unencoded: IndexMap<String, (Held, Py<PyAny>), RandomState>, put_many: Py<PyAny>)
               -> Snapshot {
        Snapshot { entries: Vec::with_capacity(unencoded.len()), unencoded, written: 0,
                   pending: Map::default(), put_many }
    }

    /// Serialise one state not serialised yet (None: it was already, or is not here).
    fn encode_one(&mut self, py: Python<'_>, number: &str) -> Option<usize> {
        let (state, ctx) = self.unencoded.swap_remove(number)?;
        Some(self.push(py, number.to_string(), &state, ctx))
    }

    fn push(&mut self, py: Python<'_>, number: String, state: &Held, ctx: Py<PyAny>) -> usize {
        let mut buf = Vec::with_capacity(320);
        state.encode(py, &mut buf);
        let at = self.entries.len();
        self.pending.insert(number.clone(), at);
        self.entries.push((number, buf, ctx));
        at
    }

    /// The fold is about to change `number`'s state: serialise it first if it is still due.
    pub fn before_change(&mut self, py: Python<'_>, number: &str) {
        if self.unencoded.contains_key(number) {
            self.encode_one(py, number);
        }
    }

    pub fn all_encoded(&self) -> bool {
        self.unencoded.is_empty()
    }
}

#[pymethods]
impl Snapshot {
    fn __len__(&self) -> usize {
        self.entries.len() + self.unencoded.len()
    }

    #[getter]
    fn done(&self) -> bool {
        self.unencoded.is_empty() && self.written == self.entries.len()
    }

    /// A state of the snapshot not written yet, serialised.
    fn get<'py>(&mut self, py: Python<'py>, key: &str) -> Option<Bound<'py, PyBytes>> {
        let at = match self.pending.get(key) {
            Some(i) => *i,
            None => self.encode_one(py, key)?,
        };
        Some(PyBytes::new(py, &self.entries[at].1))
    }

    /// Write up to `limit` more (all for None). Returns how many were written.
    #[pyo3(signature = (limit = None))]
    fn write(&mut self, py: Python<'_>, limit: Option<usize>) -> PyResult<usize> {
        let total = self.entries.len() + self.unencoded.len();
        let end = match limit {
            None => total,
            Some(n) => (self.written + n).min(total),
        };
        while self.entries.len() < end {
            let Some((number, (state, ctx))) = self.unencoded.pop() else {
                break;
            };
            self.push(py, number, &state, ctx);
        }
        let start = self.written;
        if end <= start {
            return Ok(0);
        }
        let chunk = PyList::empty(py);
        for (number, raw, ctx) in &self.entries[start..end] {
            chunk.append((number.as_str(), PyBytes::new(py, raw), ctx.clone_ref(py)))?;
        }
        self.put_many.call1(py, (chunk,))?;
        for i in start..end {
            let number = &self.entries[i].0;
            if self.pending.get(number) == Some(&i) {
                self.pending.remove(number);
            }
        }
        self.written = end;
        Ok(end - start)
    }
}

