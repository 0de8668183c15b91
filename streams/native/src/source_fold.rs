//! The source stage's fold: batch records of `signaling.sources` in, per-trunk and per-range
//! state out. `streams.source_detector.SourceDetector` drives it and keeps everything that is
//! not per event (features, scoring, the choice of scope, policy, decisions, labels).
//!
//! Per record: decode its rows (the number stage's row form, `SourceEvent.row_tail`), hand
//! any other item to the Python check (`resolve`), then fold the events in order, as
//! `SourceDetector.fold` did in Python: skip what the source already folded from that origin
//! partition, drop what fell out of the window, count, mark the source touched, and call
//! `score` on the attempt that moved its counters enough.

use std::borrow::Cow;
use std::fmt;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};
use serde::de::{self, Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Number;

use crate::event::{Kind, Proto};
use crate::hot::HotCache;
use crate::snapshot::Snapshot;
use crate::source_state::{source_ev_from_py, Attest, SourceCfg, SourceEv, SourceState,
                          RANGE_SEGMENTS, RING_BUCKETS, TRUNK_SEGMENTS};

const TRUNK_KEY: &str = "trunk:";
const ROW_FIELDS: usize = 18;

/// One row of a batch record (`SourceEvent.row_tail` with its key first), as the number stage
/// writes it; any other shape is left to the Python check.
struct Row<'a>(SourceEv<'a>, &'a str);

impl<'de: 'a, 'a> Deserialize<'de> for Row<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct RowVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for RowVisitor<'a> {
            type Value = Row<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a source event row")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Row<'a>, A::Error> {
                fn need<T>(v: Option<T>) -> Result<T, String> {
                    v.ok_or_else(|| "short row".to_string())
                }
                let run = |seq: &mut A| -> Result<Row<'a>, A::Error> {
                    let e = |m: String| de::Error::custom(m);
                    let key: &'a str = need(seq.next_element()?).map_err(e)?;
                    let ts: Number = need(seq.next_element()?).map_err(e)?;
                    let kind: &'a str = need(seq.next_element()?).map_err(e)?;
                    let proto: &'a str = need(seq.next_element()?).map_err(e)?;
                    let call_id: &'a str = need(seq.next_element()?).map_err(e)?;
                    let caller: &'a str = need(seq.next_element()?).map_err(e)?;
                    let callee: &'a str = need(seq.next_element()?).map_err(e)?;
                    let code: Option<i64> = need(seq.next_element()?).map_err(e)?;
                    let duration: Option<Number> = need(seq.next_element()?).map_err(e)?;
                    let _trunk: IgnoredAny = need(seq.next_element()?).map_err(e)?;
                    let _switch: IgnoredAny = need(seq.next_element()?).map_err(e)?;
                    let attest: Option<&'a str> = need(seq.next_element()?).map_err(e)?;
                    let caller_new: bool = need(seq.next_element()?).map_err(e)?;
                    let caller_trunks: i64 = need(seq.next_element()?).map_err(e)?;
                    let op: i64 = need(seq.next_element()?).map_err(e)?;
                    let oo: i64 = need(seq.next_element()?).map_err(e)?;
                    let oi: i64 = need(seq.next_element()?).map_err(e)?;
                    let class: Option<&'a str> = need(seq.next_element()?).map_err(e)?;
                    if seq.next_element::<IgnoredAny>()?.is_some() {
                        return Err(e(format!("more than {ROW_FIELDS} fields")));
                    }
                    let kind = Kind::parse(kind).ok_or_else(|| e("kind".to_string()))?;
                    let ts = ts.as_f64().ok_or_else(|| e("ts".to_string()))?;
                    let duration_s = match duration {
                        None => None,
                        Some(n) => {
                            let x = n.as_f64().ok_or_else(|| e("duration".to_string()))?;
                            if x == 0.0 { None } else { Some(x) } // `duration_s or 0.0`
                        }
                    };
                    Ok(Row(SourceEv {
                        ts,
                        kind,
                        proto: if proto == "isup" { Proto::Isup } else { Proto::Sip },
                        call_id: Cow::Borrowed(call_id),
                        caller: Cow::Borrowed(caller),
                        callee: Cow::Borrowed(callee),
                        code,
                        duration_s,
                        attest: Attest::of(attest),
                        caller_new,
                        caller_trunks: caller_trunks as f64,
                        origin: (op, oo, oi),
                        numbered: class.is_none(),
                    }, key))
                };
                run(&mut seq)
            }
        }
        d.deserialize_seq(RowVisitor(std::marker::PhantomData))
    }
}

enum Slot<'a> {
    Ready(SourceEv<'a>, Cow<'a, str>),
    Deferred,
}

#[derive(Default)]
struct Counts {
    replayed: u64,
    late: u64,
    trunk: u64,
    range: u64,
}

#[pyclass(module = "streams._native")]
pub struct SourceFold {
    cfg: SourceCfg,
    batch_max_events: usize,
    score_every: i64,
    score_min_attempts: i64,
    hot: HotCache<SourceState>,
    counts: Counts,
    #[pyo3(get)]
    newest_ts: f64,
    load: Py<PyAny>,
    score: Py<PyAny>,
    resolve: Py<PyAny>,
    protected: Py<PyAny>,
}

#[pymethods]
impl SourceFold {
    /// Built by `streams.source_detector.SourceDetector` (see there for each value).
    #[new]
    #[pyo3(signature = (*, cfg, batch_max_events, score_every, score_min_attempts, hot_cache,
                        load, score, resolve, protected))]
    #[allow(clippy::too_many_arguments)]
    fn new(cfg: &Bound<'_, PyAny>, batch_max_events: usize, score_every: i64,
           score_min_attempts: i64, hot_cache: usize, load: Py<PyAny>, score: Py<PyAny>,
           resolve: Py<PyAny>, protected: Py<PyAny>) -> PyResult<SourceFold> {
        if hot_cache < 1 {
            return Err(PyValueError::new_err("hot_cache must be at least 1"));
        }
        Ok(SourceFold {
            cfg: SourceCfg::from_py(cfg)?,
            batch_max_events,
            score_every,
            score_min_attempts,
            hot: HotCache::new(hot_cache),
            counts: Counts::default(),
            newest_ts: 0.0,
            load,
            score,
            resolve,
            protected,
        })
    }

    /// Decode and fold one record read at (`partition`, `offset`) routed by `ctx`. Returns
    /// (events read, events folded).
    fn ingest(&mut self, py: Python<'_>, raw: &Bound<'_, PyBytes>, ctx: Py<PyAny>)
              -> PyResult<(usize, usize)> {
        let bytes = raw.as_bytes();
        let mut slots = self.decode(bytes);
        let deferred: Vec<usize> = match &slots {
            None => Vec::new(),
            Some(s) => s.iter().enumerate()
                .filter_map(|(i, x)| matches!(x, Slot::Deferred).then_some(i)).collect(),
        };
        let mut checked: Vec<Option<(SourceEv<'static>, String)>> = Vec::new();
        if slots.is_none() || !deferred.is_empty() {
            let which: Py<PyAny> = if slots.is_none() {
                py.None()
            } else {
                PyList::new(py, &deferred)?.into_any().unbind()
            };
            let answer = self.resolve.call1(py, (raw, which))?;
            let answer = answer.bind(py);
            if answer.is_none() {
                return Ok((0, 0));
            }
            for item in answer.try_iter()? {
                let item = item?;
                checked.push(if item.is_none() {
                    None
                } else {
                    Some((source_ev_from_py(&item)?, item.getattr("key")?.extract()?))
                });
            }
            if slots.is_none() {
                slots = Some((0..checked.len()).map(|_| Slot::Deferred).collect());
            }
        }
        let mut next_checked = checked.into_iter();
        let (mut read, mut folded) = (0, 0);
        for slot in slots.unwrap_or_default() {
            let (ev, key): (SourceEv<'_>, Cow<'_, str>) = match slot {
                Slot::Ready(ev, key) => (ev, key),
                Slot::Deferred => match next_checked.next().flatten() {
                    Some((ev, key)) => (ev, Cow::Owned(key)),
                    None => continue, // dead-lettered by the check
                },
            };
            read += 1;
            folded += self.fold_one(py, &ev, &key, &ctx)?;
        }
        Ok((read, folded))
    }

    /// Fold one checked `SourceEvent` (replays, `make eval`). Returns 1 if it was folded.
    fn fold_event(&mut self, py: Python<'_>, ev: &Bound<'_, PyAny>, ctx: Py<PyAny>)
                  -> PyResult<usize> {
        let event = source_ev_from_py(ev)?;
        let key: String = ev.getattr("key")?.extract()?;
        self.fold_one(py, &event, &key, &ctx)
    }

    /// Each source touched since the last call, as it is now (see `NumberFold.snapshot`).
    fn snapshot(&mut self, py: Python<'_>, put_many: Py<PyAny>) -> PyResult<Py<Snapshot>> {
        self.hot.snapshot(py, put_many)
    }

    #[getter]
    fn dirty_count(&self) -> usize {
        self.hot.touched()
    }

    #[getter]
    fn cached_count(&self) -> usize {
        self.hot.len()
    }

    #[getter]
    fn aside_count(&self) -> usize {
        self.hot.aside_len()
    }

    /// (trunks, ranges) held in memory.
    fn cached_kinds(&self) -> (usize, usize) {
        let trunks = self.hot.keys().filter(|k| k.starts_with(TRUNK_KEY)).count();
        (trunks, self.hot.len() - trunks)
    }

    /// The source's state if it is in memory.
    fn cached(&self, py: Python<'_>, key: &str) -> Option<Py<SourceState>> {
        self.hot.cached(py, key)
    }

    /// Idle sources leave memory (their state stays in the store). Returns how many.
    fn sweep_idle(&mut self, py: Python<'_>, now_ts: f64) -> usize {
        self.hot.sweep(py, |st| st.idle_at(now_ts))
    }

    /// Forget every state in memory and every touched mark (after a rebalance).
    fn forget(&mut self) {
        self.hot.forget();
    }

    /// The counts since the last call, as (what, labels, n): `replayed`, `late`, `in`
    /// (trunk | range).
    fn take_counts<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let c = std::mem::take(&mut self.counts);
        let out = PyList::empty(py);
        let empty = PyTuple::empty(py);
        for (what, n) in [("replayed", c.replayed), ("late", c.late)] {
            if n > 0 {
                out.append((what, empty.clone(), n))?;
            }
        }
        for (label, n) in [("trunk", c.trunk), ("range", c.range)] {
            if n > 0 {
                out.append(("in", PyTuple::new(py, [label])?, n))?;
            }
        }
        Ok(out)
    }
}

impl SourceFold {
    fn decode<'a>(&self, raw: &'a [u8]) -> Option<Vec<Slot<'a>>> {
        let first = raw.iter().find(|c| !c.is_ascii_whitespace())?;
        if *first != b'[' {
            return None; // one event as an object: the Python check reads it
        }
        if let Ok(rows) = serde_json::from_slice::<Vec<Row<'a>>>(raw) {
            if rows.len() > self.batch_max_events {
                return None;
            }
            return Some(rows.into_iter().map(|Row(ev, key)| Slot::Ready(ev, Cow::Borrowed(key)))
                        .collect());
        }
        let items: Vec<&'a serde_json::value::RawValue> = serde_json::from_slice(raw).ok()?;
        if items.len() > self.batch_max_events {
            return None;
        }
        Some(items.into_iter().map(|item| match serde_json::from_str::<Row<'a>>(item.get()) {
            Ok(Row(ev, key)) => Slot::Ready(ev, Cow::Borrowed(key)),
            Err(_) => Slot::Deferred,
        }).collect())
    }

    fn state(&mut self, py: Python<'_>, key: &str, ctx: &Py<PyAny>) -> PyResult<Py<SourceState>> {
        self.hot.load(py, key, ctx, &self.load, || {
            SourceState::new(if key.starts_with(TRUNK_KEY) { TRUNK_SEGMENTS }
                             else { RANGE_SEGMENTS })
        })
    }

    fn fold_one(&mut self, py: Python<'_>, ev: &SourceEv<'_>, key: &str, ctx: &Py<PyAny>)
                -> PyResult<usize> {
        let trunk = key.starts_with(TRUNK_KEY);
        let state = self.state(py, key, ctx)?;
        self.hot.before_change(py, key);
        // Only an attempt counts a protected caller; asking for the others changes nothing.
        let protected = ev.kind == Kind::Attempt
            && self.protected.call1(py, (ev.caller.as_ref(), ev.ts))?.bind(py).is_truthy()?;
        let due = {
            let mut st = state.borrow_mut(py);
            if st.seen(ev.origin) {
                self.counts.replayed += 1;
                return Ok(0);
            }
            if !st.add_event(ev, &self.cfg, protected) {
                self.counts.late += 1;
                return Ok(0);
            }
            if trunk {
                self.counts.trunk += 1;
            } else {
                self.counts.range += 1;
            }
            self.hot.touch(py, key, ctx);
            self.newest_ts = self.newest_ts.max(ev.ts);
            ev.kind == Kind::Attempt
                && st.attempts_total - st.scored_attempts >= self.score_every
                && st.attempts_in(RING_BUCKETS) >= self.score_min_attempts
        };
        if due {
            let kind = if trunk { "trunk" } else { "range" };
            self.score.call1(py, (key, kind, state))?;
        }
        Ok(1)
    }
}
