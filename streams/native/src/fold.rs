//! The number stage's fold: records of `signaling.events` in, per-number state, pools and
//! re-keyed rows out. `streams.detector.Detector` drives it and keeps everything that is
//! not per event (scoring, policy, decisions, labels, metrics); see its docstring for the
//! contract of the callbacks.
//!
//! Per record: decode it (a batch record or one event), take each item the fast path of
//! `event.rs` accepts, hand the rest to the Python check (`resolve`), then fold the events
//! in record order. Per event, as `Detector.fold` in Python did: skip what the number's state
//! already holds (its position), drop what is too late, count, add to the prefix and trunk
//! pools, mark the number touched, re-key the event for the source stage, and call `score`
//! on the attempt that moved the counters enough.

use std::collections::HashMap;
use std::sync::Arc;

use ahash::RandomState;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};
use serde_json::value::RawValue;

use crate::event::{Checks, Event, Kind, Wire};
use crate::pool::{caller_key, Pool, Summary};
use crate::rows::{RowBatches, Where};
use crate::hot::HotCache;
use crate::snapshot::Snapshot;
use crate::state::{event_from_py, trunk_id_into, CallerState, FoldCfg, RING_MINUTES};

type Map<K, V> = HashMap<K, V, RandomState>;

/// Origin of an event that did not come from Kafka: the source stage never skips it.
const NOWHERE: Where = (-1, -1, 0);
/// Trunk ids kept as one shared string each (`streams.scope.TRUNK_IDS_CACHED`); past it a
/// trunk's id is made anew per event.
const TRUNK_IDS_CACHED: usize = 16_384;

/// Per-event facts counted here and published by the detector once per micro-batch.
#[derive(Default)]
struct Counts {
    events_in: [[u64; 4]; 2],
    replayed: u64,
    late: u64,
    source_trunk: u64,
    source_range: u64,
    unnumbered: Map<String, u64>,
}

enum Slot<'a> {
    Ready(Event<'a>),
    Deferred,
}

#[pyclass(module = "streams._native")]
pub struct NumberFold {
    cfg: FoldCfg,
    checks: Checks,
    batch_max_events: usize,
    range_strip: Vec<usize>,
    pool_prefix_len: usize,
    pool_cap: usize,
    score_every: i64,
    score_min_attempts: i64,
    trunk_key: String,
    range_key: String,
    dno: Vec<String>,
    hot: HotCache<CallerState>,
    prefix_pools: Map<String, Pool>,
    trunk_pools: Map<Arc<str>, Pool>,
    trunk_ids: Map<String, Arc<str>>,
    scratch: String,
    rows: RowBatches,
    counts: Counts,
    #[pyo3(get)]
    newest_minute: i64,
    #[pyo3(get)]
    newest_ts: f64,
    load: Py<PyAny>,
    emit: Py<PyAny>,
    score: Py<PyAny>,
    resolve: Py<PyAny>,
}

/// The first `n` characters (Python's `s[:n]`).
fn head(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// `streams.scope.range_of`: the number minus its last `strip` digits ("" for short codes).
fn range_of(number: &str, strip: usize) -> &str {
    let len = number.chars().count();
    if len <= strip + 3 {
        return "";
    }
    head(number, len - strip)
}

#[pymethods]
impl NumberFold {
    /// Built by `streams.detector.Detector` from the settings (see there for each value).
    #[new]
    #[pyo3(signature = (*, cfg, max_future_skew_s, max_duration_s, dial_prefixes, batch_max_events,
                        range_strip, pool_prefix_len, pool_cap, score_every, score_min_attempts,
                        hot_cache, trunk_key, range_key, source_partitions, source_batch_events,
                        load, emit, score, resolve))]
    #[allow(clippy::too_many_arguments)]
    fn new(cfg: &Bound<'_, PyAny>, max_future_skew_s: f64, max_duration_s: f64,
           dial_prefixes: Vec<String>, batch_max_events: usize, range_strip: Vec<usize>,
           pool_prefix_len: usize, pool_cap: usize, score_every: i64, score_min_attempts: i64,
           hot_cache: usize, trunk_key: String, range_key: String, source_partitions: u32,
           source_batch_events: usize, load: Py<PyAny>, emit: Py<PyAny>, score: Py<PyAny>,
           resolve: Py<PyAny>) -> PyResult<NumberFold> {
        if hot_cache < 1 {
            return Err(PyValueError::new_err("hot_cache must be at least 1"));
        }
        Ok(NumberFold {
            cfg: FoldCfg::from_py(cfg)?,
            checks: Checks { max_future_skew_s, max_duration_s,
                             dial_prefixes: dial_prefixes.into_iter().filter(|p| !p.is_empty())
                                 .collect() },
            batch_max_events,
            range_strip,
            pool_prefix_len,
            pool_cap,
            score_every,
            score_min_attempts,
            trunk_key,
            range_key,
            dno: Vec::new(),
            hot: HotCache::new(hot_cache),
            prefix_pools: Map::default(),
            trunk_pools: Map::default(),
            trunk_ids: Map::default(),
            scratch: String::new(),
            rows: RowBatches::new(source_partitions, source_batch_events),
            counts: Counts::default(),
            newest_minute: 0,
            newest_ts: 0.0,
            load,
            emit,
            score,
            resolve,
        })
    }

    /// The policy's do-not-originate prefixes (numbers under them are scored on every attempt).
    fn set_do_not_originate(&mut self, prefixes: Vec<String>) {
        self.dno = prefixes;
    }

    /// Decode, check and fold one record read at (`partition`, `offset`); `ctx` is what the
    /// store needs to route the states it touched (the Faust event). Returns (events read,
    /// events folded): read counts what was skipped as already folded or too late, too.
    fn ingest(&mut self, py: Python<'_>, raw: &Bound<'_, PyBytes>, partition: i64, offset: i64,
              ctx: Py<PyAny>, now: f64) -> PyResult<(usize, usize)> {
        let bytes = raw.as_bytes();
        let mut slots = self.decode(bytes, now);
        let deferred: Vec<usize> = match &slots {
            None => Vec::new(),
            Some(s) => s.iter().enumerate()
                .filter_map(|(i, x)| matches!(x, Slot::Deferred).then_some(i)).collect(),
        };
        // Events the Python check made, by their place in the record.
        let mut checked: Vec<Option<Event<'static>>> = Vec::new();
        if slots.is_none() || !deferred.is_empty() {
            let which: Py<PyAny> = if slots.is_none() {
                py.None()
            } else {
                PyList::new(py, &deferred)?.into_any().unbind()
            };
            let answer = self.resolve.call1(py, (raw, which, now))?;
            let answer = answer.bind(py);
            if answer.is_none() {
                return Ok((0, 0)); // the whole record was dead-lettered
            }
            for item in answer.try_iter()? {
                let item = item?;
                checked.push(if item.is_none() { None } else { Some(event_from_py(&item)?) });
            }
            if slots.is_none() {
                slots = Some((0..checked.len()).map(|_| Slot::Deferred).collect());
            }
        }
        let slots = slots.unwrap_or_default();
        let mut next_checked = checked.into_iter();
        let (mut read, mut folded) = (0, 0);
        for (index, slot) in slots.into_iter().enumerate() {
            let at = (partition, offset, index as i64);
            let event = match slot {
                Slot::Ready(ev) => ev,
                Slot::Deferred => match next_checked.next().flatten() {
                    Some(ev) => ev,
                    None => continue, // dead-lettered by the check
                },
            };
            read += 1;
            folded += self.fold_one(py, &event, &ctx, Some(at))?;
        }
        Ok((read, folded))
    }

    /// Fold one checked event (a `SignalingEvent`), read at `where` (partition, offset,
    /// index) or not from Kafka (None). Returns 1 if it was folded, 0 if skipped or late.
    #[pyo3(signature = (ev, ctx, r#where = None))]
    fn fold_event(&mut self, py: Python<'_>, ev: &Bound<'_, PyAny>, ctx: Py<PyAny>,
                  r#where: Option<(i64, i64, i64)>) -> PyResult<usize> {
        let event = event_from_py(ev)?;
        self.fold_one(py, &event, &ctx, r#where)
    }

    /// Send every open batch of re-keyed events (through `emit`). Returns how many rows.
    fn drain_rows(&mut self, py: Python<'_>) -> PyResult<usize> {
        let pending = self.rows.pending();
        for (p, buf) in self.rows.drain() {
            self.emit.call1(py, (p, PyBytes::new(py, &buf)))?;
        }
        Ok(pending)
    }

    /// Each number touched since the last call, as it is now, to be written through
    /// `put_many` (the store's, `put_many([(number, state, ctx), ...])`) by the micro-batch;
    /// no longer touched. Nothing is serialised yet (a commit of 15,000 states held the loop
    /// 25-50 ms for it): a state is serialised when the snapshot writes it, or before the fold
    /// changes it again, or when it is read back after leaving the hot cache.
    fn snapshot(&mut self, py: Python<'_>, put_many: Py<PyAny>) -> PyResult<Py<Snapshot>> {
        self.hot.snapshot(py, put_many)
    }

    /// How many numbers are touched and not yet written.
    #[getter]
    fn dirty_count(&self) -> usize {
        self.hot.touched()
    }

    #[getter]
    fn cached_count(&self) -> usize {
        self.hot.len()
    }

    /// The prefixes with a pool in memory.
    #[getter]
    fn prefix_pools(&self) -> Vec<String> {
        self.prefix_pools.keys().cloned().collect()
    }

    /// The trunk ids with a pool in memory.
    #[getter]
    fn trunk_pools(&self) -> Vec<String> {
        self.trunk_pools.keys().map(|k| k.to_string()).collect()
    }

    /// Touched states pushed out of the hot cache, waiting for the commit to write them.
    #[getter]
    fn aside_count(&self) -> usize {
        self.hot.aside_len()
    }

    /// The number's state if it is in memory (hot, or touched and waiting for the commit).
    fn cached(&self, py: Python<'_>, number: &str) -> Option<Py<CallerState>> {
        self.hot.cached(py, number)
    }

    /// Forget every state held in memory and every touched mark: after a rebalance the store
    /// is the truth again (another worker may own a number now).
    fn forget(&mut self) {
        self.hot.forget();
    }

    /// (callers, attempts, answer ratio, short ratio) of the pool of the number's prefix.
    fn prefix_summary(&mut self, number: &str, now_minute: i64) -> Option<Summary> {
        let prefix = head(number, self.pool_prefix_len);
        self.prefix_pools.get_mut(prefix).map(|p| p.summary(now_minute, RING_MINUTES))
    }

    /// The same of a trunk's pool (by trunk id).
    fn trunk_summary(&mut self, trunk: &str, now_minute: i64) -> Option<Summary> {
        self.trunk_pools.get_mut(trunk).map(|p| p.summary(now_minute, RING_MINUTES))
    }

    /// Forget pools with no traffic in the last hour of event time.
    fn sweep_pools(&mut self) -> usize {
        let start = self.newest_minute - RING_MINUTES;
        let before = self.prefix_pools.len() + self.trunk_pools.len();
        self.prefix_pools.retain(|_, p| !p.idle_since(start));
        self.trunk_pools.retain(|_, p| !p.idle_since(start));
        before - self.prefix_pools.len() - self.trunk_pools.len()
    }

    /// The counts since the last call, as (what, labels, n): `in` (proto, kind), `replayed`,
    /// `late`, `source_out` (trunk | range), `unnumbered` (caller class).
    fn take_counts<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let c = std::mem::take(&mut self.counts);
        let out = PyList::empty(py);
        for (p, proto) in ["sip", "isup"].iter().enumerate() {
            for (k, kind) in ["attempt", "answer", "release", "fail"].iter().enumerate() {
                let n = c.events_in[p][k];
                if n > 0 {
                    out.append(("in", PyTuple::new(py, [*proto, *kind])?, n))?;
                }
            }
        }
        let empty = PyTuple::empty(py);
        for (what, n) in [("replayed", c.replayed), ("late", c.late)] {
            if n > 0 {
                out.append((what, empty.clone(), n))?;
            }
        }
        for (label, n) in [("trunk", c.source_trunk), ("range", c.source_range)] {
            if n > 0 {
                out.append(("source_out", PyTuple::new(py, [label])?, n))?;
            }
        }
        for (class, n) in c.unnumbered {
            out.append(("unnumbered", PyTuple::new(py, [class])?, n))?;
        }
        Ok(out)
    }
}

impl NumberFold {
    /// The record's items, each taken by the fast path or deferred; None when the record
    /// itself is for the Python side to judge (not JSON to this parser, not an array or
    /// object, too many events).
    fn decode<'a>(&self, raw: &'a [u8], now: f64) -> Option<Vec<Slot<'a>>> {
        let first = raw.iter().find(|c| !c.is_ascii_whitespace())?;
        match first {
            b'{' => {
                let wire: Wire<'a> = match serde_json::from_slice(raw) {
                    Ok(w) => w,
                    Err(_) => return Some(vec![Slot::Deferred]),
                };
                Some(vec![self.take(wire, now)])
            }
            b'[' => {
                if let Ok(wires) = serde_json::from_slice::<Vec<Wire<'a>>>(raw) {
                    if wires.len() > self.batch_max_events {
                        return None;
                    }
                    return Some(wires.into_iter().map(|w| self.take(w, now)).collect());
                }
                // Some item is not of the fast path's form: judge the items one by one.
                let items: Vec<&'a RawValue> = serde_json::from_slice(raw).ok()?;
                if items.len() > self.batch_max_events {
                    return None;
                }
                Some(items.into_iter().map(|item| {
                    match serde_json::from_str::<Wire<'a>>(item.get()) {
                        Ok(w) => self.take(w, now),
                        Err(_) => Slot::Deferred,
                    }
                }).collect())
            }
            _ => None,
        }
    }

    fn take<'a>(&self, wire: Wire<'a>, now: f64) -> Slot<'a> {
        match self.checks.accept(wire, now) {
            Some(ev) => Slot::Ready(ev),
            None => Slot::Deferred,
        }
    }

    fn trunk_of(&mut self, ev: &Event<'_>) -> Arc<str> {
        trunk_id_into(&mut self.scratch, ev.switch.as_deref(), ev.trunk.as_deref());
        if let Some(id) = self.trunk_ids.get(self.scratch.as_str()) {
            return id.clone();
        }
        let id: Arc<str> = Arc::from(self.scratch.as_str());
        if self.trunk_ids.len() < TRUNK_IDS_CACHED {
            self.trunk_ids.insert(self.scratch.clone(), id.clone());
        }
        id
    }

    /// The number's state: in memory, in the store, or new.
    fn state(&mut self, py: Python<'_>, number: &str, ctx: &Py<PyAny>)
             -> PyResult<Py<CallerState>> {
        self.hot.load(py, number, ctx, &self.load, CallerState::default)
    }

    fn should_score(&self, number: &str, st: &CallerState) -> bool {
        if !self.dno.is_empty() && self.dno.iter().any(|p| number.starts_with(p.as_str())) {
            return st.action != "block" || st.action_until <= st.hwm_ts;
        }
        if st.attempts_total - st.scored_attempts < self.score_every {
            return false;
        }
        st.attempts_in(60) >= self.score_min_attempts
    }

    fn fold_one(&mut self, py: Python<'_>, ev: &Event<'_>, ctx: &Py<PyAny>, at: Option<Where>)
                -> PyResult<usize> {
        let trunk = self.trunk_of(ev);
        if let Some(class) = ev.caller_class.as_deref() {
            // Not a number (withheld, invalid): no per-number state, its trunk counts it.
            self.counts.events_in[ev.proto.index()][ev.kind.index()] += 1;
            *self.counts.unnumbered.entry(class.to_string()).or_insert(0) += 1;
            self.forward(py, ev, &trunk, at, false, 1)?;
            return Ok(1);
        }
        let number: &str = &ev.caller;
        let state = self.state(py, number, ctx)?;
        self.hot.before_change(py, number);
        let (caller_new, caller_trunks, due) = {
            let mut st = state.borrow_mut(py);
            if let Some(w) = at {
                if let Some(f) = st.folded {
                    if w.0 == f.0 && (w.1, w.2) <= (f.1, f.2) {
                        self.counts.replayed += 1;
                        return Ok(0);
                    }
                }
                st.folded = Some(w);
            }
            if !st.add_event(ev, &trunk, &self.cfg) {
                self.counts.late += 1;
                return Ok(0);
            }
            self.counts.events_in[ev.proto.index()][ev.kind.index()] += 1;
            let key = caller_key(number);
            let short = self.cfg.short_call_s;
            let cap = self.pool_cap;
            let prefix = head(number, self.pool_prefix_len);
            match self.prefix_pools.get_mut(prefix) {
                Some(pool) => pool.add(ev, key, short),
                None => {
                    let mut pool = Pool::new(cap);
                    pool.add(ev, key, short);
                    self.prefix_pools.insert(prefix.to_string(), pool);
                }
            }
            if ev.trunk.as_deref().is_some_and(|t| !t.is_empty()) {
                self.trunk_pools.entry(trunk.clone()).or_insert_with(|| Pool::new(cap))
                    .add(ev, key, short);
            }
            self.hot.touch(py, number, ctx);
            self.newest_minute = self.newest_minute.max(st.hwm_minute());
            self.newest_ts = self.newest_ts.max(st.hwm_ts);
            let due = ev.kind == Kind::Attempt && self.should_score(number, &st);
            (st.new_stretch(ev.ts, self.cfg.caller_new_after_s), st.trunks.len().max(1) as i64,
             due)
        };
        self.forward(py, ev, &trunk, at, caller_new, caller_trunks)?;
        if due {
            // Score on the event that moved the counters enough, not at the record's end:
            // decisions then depend on the event sequence only, not on how it was batched.
            let (minute, last_trunk) = {
                let st = state.borrow(py);
                (st.hwm_minute(), st.last_trunk.clone())
            };
            let prefix = self.prefix_summary(number, minute);
            let trunk_sum = self.trunk_summary(&last_trunk, minute);
            self.score.call1(py, (number, state, prefix, trunk_sum))?;
        }
        Ok(1)
    }

    /// Re-key the event by where it came from: its trunk, and each configured range of its
    /// caller number (none for a caller that is not a number).
    fn forward(&mut self, py: Python<'_>, ev: &Event<'_>, trunk: &str, at: Option<Where>,
               caller_new: bool, caller_trunks: i64) -> PyResult<()> {
        self.rows.set_tail(ev, caller_new, caller_trunks, at.unwrap_or(NOWHERE));
        let mut key = String::with_capacity(self.trunk_key.len() + trunk.len());
        key.push_str(&self.trunk_key);
        key.push_str(trunk);
        if let Some((p, buf)) = self.rows.add(&key) {
            self.emit.call1(py, (p, PyBytes::new(py, &buf)))?;
        }
        self.counts.source_trunk += 1;
        if ev.caller_class.is_some() {
            return Ok(());
        }
        for i in 0..self.range_strip.len() {
            let rng = range_of(&ev.caller, self.range_strip[i]);
            if rng.is_empty() {
                continue;
            }
            key.clear();
            key.push_str(&self.range_key);
            key.push_str(rng);
            if let Some((p, buf)) = self.rows.add(&key) {
                self.emit.call1(py, (p, PyBytes::new(py, &buf)))?;
            }
            self.counts.source_range += 1;
        }
        Ok(())
    }
}
