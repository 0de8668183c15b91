//! Per-source windowed counters: the state `streams.source_features` documents, folded here.
//!
//! A trunk keeps three segments (all calls, neighbour-spoofed calls, calls without A
//! attestation), a range one; five-minute buckets over the hour, hourly calls and
//! conversations over the day, capped maps of distinct callers, callees and caller ranges, the
//! calls in progress of a trunk (memory only) and one position per origin partition. Every
//! rule is the Python reference's, in the same order (dict insertion order included), so the
//! counts and what is forgotten at a cap are identical.

use std::collections::{HashMap, VecDeque};

use indexmap::IndexMap;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

use crate::event::{Kind, Proto};
use crate::json;
use crate::pyfloat::floordiv;
use crate::state::fail_slot_of;

pub const BUCKET_S: f64 = 300.0;
pub const HOUR_S: f64 = 3600.0;
/// Buckets of the longest window (`RING_BUCKETS`).
pub const RING_BUCKETS: i64 = 12;
pub const DAY_HOURS: i64 = 24;
pub const N_SLOTS: usize = 16;
pub const STATE_VERSION: i64 = 2;
/// Slot order of one segment (`streams.source_features` names the same indices).
pub const SOURCE_SLOT_NAMES: [&str; N_SLOTS] = [
    "ATTEMPTS", "ANSWERED", "RELEASES", "SHORT", "CONV", "DUR_SUM", "F_UNALLOC", "F_BUSY",
    "F_REJECTED", "F_OTHER", "NEW", "SPOOFED", "ATTEST_A", "ATTEST_C", "ATTEST_NONE",
    "PROTECTED",
];
const ATTEMPTS: usize = 0;
const ANSWERED: usize = 1;
const RELEASES: usize = 2;
const SHORT: usize = 3;
const CONV: usize = 4;
const DUR_SUM: usize = 5;
const F_UNALLOC: usize = 6;
const NEW: usize = 10;
const SPOOFED: usize = 11;
const ATTEST_A: usize = 12;
const ATTEST_C: usize = 13;
const ATTEST_NONE: usize = 14;
const PROTECTED: usize = 15;
const BIT_NEIGHBOUR: i64 = 1;
const BIT_UNVERIFIED: i64 = 2;
pub const TRUNK_SEGMENTS: usize = 3;
pub const RANGE_SEGMENTS: usize = 1;

/// `streams.source_features.SourceConfig`.
#[derive(Clone, Debug)]
pub struct SourceCfg {
    pub short_call_s: f64,
    pub conversation_s: f64,
    pub neighbour_tail: usize,
    pub distinct_cap: usize,
    pub late_grace_s: f64,
    pub open_calls_cap: usize,
}

impl SourceCfg {
    pub fn from_py(cfg: &Bound<'_, PyAny>) -> PyResult<SourceCfg> {
        Ok(SourceCfg {
            short_call_s: cfg.getattr("short_call_s")?.extract()?,
            conversation_s: cfg.getattr("conversation_s")?.extract()?,
            neighbour_tail: cfg.getattr("neighbour_tail")?.extract()?,
            distinct_cap: cfg.getattr("distinct_cap")?.extract()?,
            late_grace_s: cfg.getattr("late_grace_s")?.extract()?,
            open_calls_cap: cfg.getattr("open_calls_cap")?.extract()?,
        })
    }
}

/// What the source stage reads of an event (`streams.schema.SourceEvent`).
#[derive(Clone, Debug)]
pub struct SourceEv<'a> {
    pub ts: f64,
    pub kind: Kind,
    pub proto: Proto,
    pub call_id: std::borrow::Cow<'a, str>,
    pub caller: std::borrow::Cow<'a, str>,
    pub callee: std::borrow::Cow<'a, str>,
    pub code: Option<i64>,
    pub duration_s: Option<f64>,
    /// None, "A", "C", or another value (B, or anything else)
    pub attest: Attest,
    pub caller_new: bool,
    pub caller_trunks: f64,
    pub origin: (i64, i64, i64),
    pub numbered: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attest {
    None,
    A,
    C,
    Other,
}

impl Attest {
    pub fn of(a: Option<&str>) -> Attest {
        match a {
            None => Attest::None,
            Some("A") => Attest::A,
            Some("C") => Attest::C,
            Some(_) => Attest::Other,
        }
    }
}

#[inline]
fn key32(text: &str) -> u32 {
    crc32fast::hash(text.as_bytes())
}

fn chars(s: &str) -> usize {
    if s.is_ascii() { s.len() } else { s.chars().count() }
}

fn head(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// `streams.scope.is_neighbour`.
fn is_neighbour(caller: &str, callee: &str, tail: usize) -> bool {
    let (lc, le) = (chars(caller), chars(callee));
    if lc != le || le <= tail + 3 || caller == callee {
        return false;
    }
    head(caller, lc - tail) == head(callee, le - tail)
}

/// `streams.scope.range_of`.
fn range_of(number: &str, strip: usize) -> &str {
    let len = chars(number);
    if len <= strip + 3 {
        return "";
    }
    head(number, len - strip)
}

/// `_remember`: last bucket of `key`; past `cap` the least recently seen is forgotten.
fn remember(d: &mut IndexMap<u32, i64>, key: u32, bucket: i64, cap: usize) {
    if let Some(old) = d.get(&key).copied() {
        if bucket > old {
            d.shift_remove(&key);
            d.insert(key, bucket);
        }
        return;
    }
    if d.len() >= cap && !d.is_empty() {
        d.shift_remove_index(0);
    }
    d.insert(key, bucket);
}

/// Calls in progress in first-insertion order (a dict that never moves an updated key), with
/// removal from the front in O(1): a busy trunk is at its cap of 4,096 on every attempt.
#[derive(Clone, Debug, Default)]
pub struct OpenCalls {
    bits: HashMap<u32, (i64, u64)>,
    order: VecDeque<(u32, u64)>,
    seq: u64,
}

impl OpenCalls {
    fn len(&self) -> usize {
        self.bits.len()
    }
    fn get(&self, call: u32) -> Option<i64> {
        self.bits.get(&call).map(|(b, _)| *b)
    }
    fn set(&mut self, call: u32, bits: i64) {
        if let Some(entry) = self.bits.get_mut(&call) {
            entry.0 = bits; // stays where it is, as a dict's key does
            return;
        }
        self.seq += 1;
        self.bits.insert(call, (bits, self.seq));
        self.order.push_back((call, self.seq));
    }
    fn remove(&mut self, call: u32) {
        self.bits.remove(&call);
        if self.order.len() > 2 * self.bits.len() + 64 {
            let bits = &self.bits;
            self.order.retain(|(c, s)| bits.get(c).is_some_and(|(_, t)| t == s));
        }
    }
    fn remove_first(&mut self) {
        while let Some((call, seq)) = self.order.pop_front() {
            if self.bits.get(&call).is_some_and(|(_, s)| *s == seq) {
                self.bits.remove(&call);
                return;
            }
        }
    }
}

#[pyclass(module = "streams._native")]
#[derive(Clone, Debug)]
pub struct SourceState {
    #[pyo3(get)]
    pub segments: usize,
    #[pyo3(get, set)]
    pub hwm_ts: f64,
    /// Oldest event of the current stretch of traffic (reset after an idle window).
    #[pyo3(get, set)]
    pub first_ts: f64,
    /// bucket index -> segments * N_SLOTS counters, in the order first seen
    pub buckets: Vec<(i64, Vec<f64>)>,
    /// hour index -> [attempts, conversations] per segment, over the last day
    pub hours: Vec<(i64, Vec<i64>)>,
    /// caller key -> [last bucket, attempts, segment bits, conversations]
    pub callers: IndexMap<u32, [i64; 4]>,
    pub callees: IndexMap<u32, i64>,
    pub ranges: IndexMap<u32, i64>,
    #[pyo3(get, set)]
    pub attempts_total: i64,
    #[pyo3(get, set)]
    pub scored_attempts: i64,
    #[pyo3(get, set)]
    pub action: String,
    #[pyo3(get, set)]
    pub action_until: f64,
    #[pyo3(get, set)]
    pub action_score: f64,
    #[pyo3(get, set)]
    pub action_dry: bool,
    /// The CallMatch of the action in force as JSON ("null": the whole source).
    pub action_match: String,
    pub open_calls: OpenCalls,
    /// origin partition -> (offset, index) of the newest event folded from it
    pub origins: IndexMap<i64, (i64, i64)>,
}

impl SourceState {
    pub fn new(segments: usize) -> SourceState {
        SourceState {
            segments,
            hwm_ts: 0.0,
            first_ts: 0.0,
            buckets: Vec::new(),
            hours: Vec::new(),
            callers: IndexMap::new(),
            callees: IndexMap::new(),
            ranges: IndexMap::new(),
            attempts_total: 0,
            scored_attempts: 0,
            action: String::new(),
            action_until: 0.0,
            action_score: 0.0,
            action_dry: false,
            action_match: "null".to_string(),
            open_calls: OpenCalls::default(),
            origins: IndexMap::new(),
        }
    }

    /// `Origins.seen`: true if already folded; otherwise the event becomes the newest.
    pub fn seen(&mut self, (p, o, i): (i64, i64, i64)) -> bool {
        if p == -1 {
            return false;
        }
        if let Some(last) = self.origins.get(&p) {
            if (o, i) <= *last {
                return true;
            }
        }
        self.origins.insert(p, (o, i));
        false
    }

    /// Fold one event in; false if it is too late to count.
    pub fn add_event(&mut self, ev: &SourceEv<'_>, cfg: &SourceCfg, protected: bool) -> bool {
        let ts = ev.ts;
        if ts < self.hwm_ts - cfg.late_grace_s {
            return false;
        }
        let bucket_no = floordiv(ts, BUCKET_S);
        if ts > self.hwm_ts {
            if ts - self.hwm_ts > (RING_BUCKETS as f64) * BUCKET_S {
                self.first_ts = ts; // idle for a whole window: a new stretch
            }
            let moved = bucket_no != floordiv(self.hwm_ts, BUCKET_S);
            self.hwm_ts = ts;
            if moved {
                self.evict(bucket_no);
            }
        }
        if self.first_ts == 0.0 || ts < self.first_ts {
            self.first_ts = ts;
        }
        let width = N_SLOTS * self.segments;
        let at = match self.buckets.iter().rposition(|(b, _)| *b == bucket_no) {
            Some(i) => i,
            None => {
                self.buckets.push((bucket_no, vec![0.0; width]));
                self.buckets.len() - 1
            }
        };
        let segs = self.segments_of(ev, cfg);
        let kind = ev.kind;
        let people = ev.numbered;
        let duration = ev.duration_s.unwrap_or(0.0);
        let conversation = kind == Kind::Release && duration >= cfg.conversation_s;
        if kind == Kind::Attempt {
            self.attempts_total += 1;
            if people {
                self.add_people(ev, bucket_no, cfg, &segs);
            }
        } else if people && conversation {
            if let Some(talker) = self.callers.get_mut(&key32(&ev.caller)) {
                talker[3] += 1;
            }
        }
        if kind == Kind::Attempt || conversation {
            let hour_no = floordiv(ts, HOUR_S);
            let h = match self.hours.iter().rposition(|(h, _)| *h == hour_no) {
                Some(i) => i,
                None => {
                    self.hours.push((hour_no, vec![0; 2 * self.segments]));
                    self.hours.len() - 1
                }
            };
            for seg in segs.iter() {
                self.hours[h].1[2 * seg + usize::from(kind != Kind::Attempt)] += 1;
            }
        }
        let bucket = &mut self.buckets[at].1;
        for seg in segs.iter() {
            let b = seg * N_SLOTS;
            match kind {
                Kind::Attempt => {
                    bucket[b + ATTEMPTS] += 1.0;
                    if ev.caller_new {
                        bucket[b + NEW] += 1.0;
                    }
                    if ev.caller_trunks > 1.0 {
                        bucket[b + SPOOFED] += 1.0;
                    }
                    match ev.attest {
                        Attest::A => bucket[b + ATTEST_A] += 1.0,
                        Attest::C => bucket[b + ATTEST_C] += 1.0,
                        Attest::None => bucket[b + ATTEST_NONE] += 1.0,
                        Attest::Other => {}
                    }
                    if protected {
                        bucket[b + PROTECTED] += 1.0;
                    }
                }
                Kind::Answer => bucket[b + ANSWERED] += 1.0,
                Kind::Release => {
                    bucket[b + RELEASES] += 1.0;
                    bucket[b + DUR_SUM] += duration;
                    if duration < cfg.short_call_s {
                        bucket[b + SHORT] += 1.0;
                    }
                    if duration >= cfg.conversation_s {
                        bucket[b + CONV] += 1.0;
                    }
                }
                Kind::Fail => {
                    bucket[b + F_UNALLOC + fail_slot_of(ev.proto, ev.code)] += 1.0
                }
            }
        }
        true
    }

    fn segments_of(&mut self, ev: &SourceEv<'_>, cfg: &SourceCfg) -> Segs {
        if self.segments == RANGE_SEGMENTS {
            return Segs::one(0);
        }
        let call = key32(&ev.call_id);
        let bits = if ev.kind == Kind::Attempt {
            let bits = (if is_neighbour(&ev.caller, &ev.callee, cfg.neighbour_tail) {
                BIT_NEIGHBOUR
            } else {
                0
            }) | (if ev.attest != Attest::A { BIT_UNVERIFIED } else { 0 });
            if self.open_calls.len() >= cfg.open_calls_cap {
                self.open_calls.remove_first();
            }
            self.open_calls.set(call, bits);
            bits
        } else {
            let known = self.open_calls.get(call);
            if matches!(ev.kind, Kind::Release | Kind::Fail) {
                self.open_calls.remove(call);
            }
            match known {
                Some(b) if b >= 0 => b,
                // attempt not seen (evicted, restarted): neighbour is in the event
                _ => if is_neighbour(&ev.caller, &ev.callee, cfg.neighbour_tail) {
                    BIT_NEIGHBOUR
                } else {
                    0
                },
            }
        };
        let mut segs = Segs::one(0);
        if bits & BIT_NEIGHBOUR != 0 {
            segs.push(1);
        }
        if bits & BIT_UNVERIFIED != 0 {
            segs.push(2);
        }
        segs
    }

    fn add_people(&mut self, ev: &SourceEv<'_>, bucket_no: i64, cfg: &SourceCfg, segs: &Segs) {
        let key = key32(&ev.caller);
        let bits: i64 = segs.iter().map(|s| 1i64 << s).sum();
        if let Some(entry) = self.callers.get(&key).copied() {
            let mut e = entry;
            e[1] += 1;
            e[2] |= bits;
            if bucket_no > entry[0] {
                // least recently seen first, as in remember()
                e[0] = bucket_no;
                self.callers.shift_remove(&key);
                self.callers.insert(key, e);
            } else {
                self.callers.insert(key, e);
            }
        } else {
            if self.callers.len() >= cfg.distinct_cap && !self.callers.is_empty() {
                self.callers.shift_remove_index(0);
            }
            self.callers.insert(key, [bucket_no, 1, bits, 0]);
        }
        remember(&mut self.callees, key32(&ev.callee), bucket_no, cfg.distinct_cap);
        let rng = range_of(&ev.caller, cfg.neighbour_tail);
        if !rng.is_empty() {
            remember(&mut self.ranges, key32(rng), bucket_no, cfg.distinct_cap);
        }
    }

    fn evict(&mut self, now_bucket: i64) {
        let day_horizon = (now_bucket * BUCKET_S as i64).div_euclid(HOUR_S as i64) - DAY_HOURS;
        self.hours.retain(|(h, _)| *h > day_horizon);
        let horizon = now_bucket - RING_BUCKETS;
        let before = self.buckets.len();
        self.buckets.retain(|(b, _)| *b > horizon);
        if self.buckets.len() != before {
            self.callers.retain(|_, e| e[0] > horizon);
            self.callees.retain(|_, b| *b > horizon);
            self.ranges.retain(|_, b| *b > horizon);
        }
    }

    pub fn idle_at(&self, now_ts: f64) -> bool {
        now_ts - self.hwm_ts > (RING_BUCKETS as f64) * BUCKET_S && now_ts > self.action_until
    }

    pub fn hwm_bucket(&self) -> i64 {
        floordiv(self.hwm_ts, BUCKET_S)
    }

    pub fn attempts_in(&self, buckets: i64) -> i64 {
        let start = self.hwm_bucket() - buckets;
        let mut n = 0.0;
        for (b, v) in &self.buckets {
            if *b > start {
                n += v[ATTEMPTS];
            }
        }
        n as i64
    }

    /// `SourceState.to_bytes` of the Python reference (version 2).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut l = json::List::open(out);
        json::int(l.next(), STATE_VERSION);
        json::int(l.next(), self.segments as i64);
        json::float(l.next(), self.hwm_ts);
        json::float(l.next(), self.first_ts);
        json::list(l.next(), &self.buckets, |o, (b, v)| json::slot_row(o, *b, v));
        json::list(l.next(), &self.hours,
                   |o, (h, v)| json::ints(o, std::iter::once(*h).chain(v.iter().copied())));
        json::list(l.next(), &self.callers,
                   |o, (k, e)| json::ints(o, std::iter::once(*k as i64).chain(e.iter().copied())));
        for map in [&self.callees, &self.ranges] {
            json::list(l.next(), map, |o, (k, b)| json::ints(o, [*k as i64, *b]));
        }
        json::int(l.next(), self.attempts_total);
        json::int(l.next(), self.scored_attempts);
        json::string(l.next(), &self.action);
        json::float(l.next(), self.action_until);
        json::float(l.next(), self.action_score);
        json::boolean(l.next(), self.action_dry);
        l.next().extend_from_slice(self.action_match.as_bytes());
        json::list(l.next(), &self.origins, |o, (p, (off, i))| json::ints(o, [*p, *off, *i]));
        l.close();
    }

    /// Reads versions 1 (no origin positions: nothing known folded) and 2.
    pub fn decode(raw: &[u8]) -> Result<SourceState, String> {
        use serde_json::Value;
        let unknown = || {
            let shown: String = String::from_utf8_lossy(&raw[..raw.len().min(40)]).into();
            format!("source state of an unknown version: {shown:?}")
        };
        let row: Vec<Value> = serde_json::from_slice(raw).map_err(|_| unknown())?;
        let version = row.first().and_then(Value::as_i64).ok_or_else(unknown)?;
        if !(1..=STATE_VERSION).contains(&version) || row.len() < 16 {
            return Err(unknown());
        }
        let f = |v: &Value| v.as_f64().ok_or_else(|| format!("expected a number, got {v}"));
        let i = |v: &Value| v.as_i64().or_else(|| v.as_f64().map(|x| x as i64))
            .ok_or_else(|| format!("expected an integer, got {v}"));
        let arr = |v: &Value| {
            v.as_array().cloned().ok_or_else(|| format!("expected a list, got {v}"))
        };
        let mut st = SourceState::new(i(&row[1])? as usize);
        st.hwm_ts = f(&row[2])?;
        st.first_ts = f(&row[3])?;
        for r in arr(&row[4])? {
            let r = arr(&r)?;
            let values = r.iter().skip(1).map(f).collect::<Result<Vec<_>, _>>()?;
            st.buckets.push((i(&r[0])?, values));
        }
        for r in arr(&row[5])? {
            let r = arr(&r)?;
            let values = r.iter().skip(1).map(i).collect::<Result<Vec<_>, _>>()?;
            st.hours.push((i(&r[0])?, values));
        }
        for r in arr(&row[6])? {
            let r = arr(&r)?;
            st.callers.insert(i(&r[0])? as u32, [i(&r[1])?, i(&r[2])?, i(&r[3])?, i(&r[4])?]);
        }
        for (at, map) in [(7, &mut st.callees), (8, &mut st.ranges)] {
            for r in arr(&row[at])? {
                let r = arr(&r)?;
                map.insert(i(&r[0])? as u32, i(&r[1])?);
            }
        }
        st.attempts_total = i(&row[9])?;
        st.scored_attempts = i(&row[10])?;
        st.action = row[11].as_str().unwrap_or("").to_string();
        st.action_until = f(&row[12])?;
        st.action_score = f(&row[13])?;
        st.action_dry = row[14].as_bool().unwrap_or(false);
        st.action_match = row[15].to_string();
        if version >= 2 && row.len() >= 17 {
            for r in arr(&row[16])? {
                let r = arr(&r)?;
                st.origins.insert(i(&r[0])?, (i(&r[1])?, i(&r[2])?));
            }
        }
        Ok(st)
    }
}

/// The segments a call counts in (all calls first), without an allocation per event.
#[derive(Clone, Copy)]
pub struct Segs {
    n: usize,
    s: [usize; 3],
}

impl Segs {
    fn one(seg: usize) -> Segs {
        Segs { n: 1, s: [seg, 0, 0] }
    }
    fn push(&mut self, seg: usize) {
        self.s[self.n] = seg;
        self.n += 1;
    }
    fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.s[..self.n].iter().copied()
    }
}

fn coerce_code(v: &Bound<'_, PyAny>) -> PyResult<Option<i64>> {
    // As Python's `code in {404, 484}`: an int (True is 1) or an integral float matches, any
    // other value counts as "other".
    if v.is_none() {
        return Ok(None);
    }
    if let Ok(i) = v.extract::<i64>() {
        return Ok(Some(i));
    }
    if let Ok(x) = v.extract::<f64>() {
        if x.fract() == 0.0 && x.abs() < 9.0e15 {
            return Ok(Some(x as i64));
        }
    }
    Ok(None)
}

/// A Python `SourceEvent` (the check has accepted it) as the fold reads it. Fields the check
/// does not look at but the fold compares must be numbers (`duration_s`, `caller_trunks`)
/// or strings (`call_id`); anything else raises TypeError (the caller dead-letters it).
pub fn source_ev_from_py(ev: &Bound<'_, PyAny>) -> PyResult<SourceEv<'static>> {
    use std::borrow::Cow;
    let kind: String = ev.getattr("kind")?.extract()?;
    let proto: String = ev.getattr("proto")?.extract().unwrap_or_default();
    let duration = ev.getattr("duration_s")?;
    let duration_s = if duration.is_none() || !duration.is_truthy()? {
        None
    } else {
        Some(duration.extract::<f64>().map_err(|_| PyTypeError::new_err("duration_s"))?)
    };
    let attest = ev.getattr("attest")?;
    let attest = if attest.is_none() {
        Attest::None
    } else {
        match attest.extract::<String>().ok().as_deref() {
            Some("A") => Attest::A,
            Some("C") => Attest::C,
            _ => Attest::Other,
        }
    };
    Ok(SourceEv {
        ts: ev.getattr("ts")?.extract()?,
        kind: Kind::parse(&kind).ok_or_else(|| PyValueError::new_err(format!("kind {kind:?}")))?,
        proto: if proto == "isup" { Proto::Isup } else { Proto::Sip },
        call_id: Cow::Owned(ev.getattr("call_id")?.extract::<String>()
                            .map_err(|_| PyTypeError::new_err("call_id"))?),
        caller: Cow::Owned(ev.getattr("caller")?.extract()?),
        callee: Cow::Owned(ev.getattr("callee")?.extract()?),
        code: coerce_code(&ev.getattr("code")?)?,
        duration_s,
        attest,
        caller_new: ev.getattr("caller_new")?.is_truthy()?,
        caller_trunks: ev.getattr("caller_trunks")?.extract::<f64>()
            .map_err(|_| PyTypeError::new_err("caller_trunks"))?,
        origin: (ev.getattr("origin_partition")?.extract()?,
                 ev.getattr("origin_offset")?.extract()?,
                 ev.getattr("origin_index")?.extract()?),
        numbered: ev.getattr("caller_class")?.is_none(),
    })
}

fn json_value<'py>(py: Python<'py>, text: &str) -> PyResult<Bound<'py, PyAny>> {
    py.import("orjson")?.call_method1("loads", (text,))
}

#[pymethods]
impl SourceState {
    #[new]
    fn py_new(segments: usize) -> PyResult<Self> {
        if segments != TRUNK_SEGMENTS && segments != RANGE_SEGMENTS {
            return Err(PyValueError::new_err("a source has 1 segment (range) or 3 (trunk)"));
        }
        Ok(SourceState::new(segments))
    }

    /// Fold one event in (a `SourceEvent`); False if it is too late to count.
    #[pyo3(signature = (ev, cfg, protected = false))]
    fn add(&mut self, ev: &Bound<'_, PyAny>, cfg: &Bound<'_, PyAny>, protected: bool)
           -> PyResult<bool> {
        let event = source_ev_from_py(ev)?;
        Ok(self.add_event(&event, &SourceCfg::from_py(cfg)?, protected))
    }

    #[getter(hwm_bucket)]
    fn py_hwm_bucket(&self) -> i64 {
        self.hwm_bucket()
    }

    /// Slot sums of every segment over the newest `buckets` buckets, added in bucket order.
    fn window(&self, buckets: i64) -> Vec<f64> {
        let start = self.hwm_bucket() - buckets;
        let mut total = vec![0.0; N_SLOTS * self.segments];
        for (b, v) in &self.buckets {
            if *b > start {
                for (t, x) in total.iter_mut().zip(v.iter()) {
                    *t += *x;
                }
            }
        }
        total
    }

    #[pyo3(signature = (buckets = RING_BUCKETS))]
    fn attempts(&self, buckets: i64) -> i64 {
        self.attempts_in(buckets)
    }

    /// Nothing within the longest window and no action in force: forget it.
    fn is_idle(&self, now_ts: f64) -> bool {
        self.idle_at(now_ts)
    }

    /// The callers seen after bucket `start`, summed as the features read them: (callers,
    /// callers with one call, per segment [its callers, the calls of those with at least
    /// `heavy` calls, those with a conversation]). Summed here because a busy trunk holds
    /// `distinct_cap` callers and is scored often: the same sums over a list of them in
    /// Python took five times what the whole features take now.
    fn caller_summary(&self, start: i64, heavy: i64) -> (i64, i64, Vec<[i64; 3]>) {
        let mut per = vec![[0i64; 3]; self.segments];
        let (mut total, mut once) = (0i64, 0i64);
        for e in self.callers.values().filter(|e| e[0] > start) {
            let (calls, bits, conversations) = (e[1], e[2], e[3]);
            total += 1;
            if calls == 1 {
                once += 1;
            }
            for (seg, sums) in per.iter_mut().enumerate() {
                if (bits >> seg) & 1 == 1 {
                    sums[0] += 1;
                    if calls >= heavy {
                        sums[1] += calls;
                    }
                    if conversations > 0 {
                        sums[2] += 1;
                    }
                }
            }
        }
        (total, once, per)
    }

    /// Distinct callees seen after bucket `start`.
    fn callees_since(&self, start: i64) -> usize {
        self.callees.values().filter(|b| **b > start).count()
    }

    /// Distinct caller ranges seen after bucket `start`.
    fn ranges_since(&self, start: i64) -> usize {
        self.ranges.values().filter(|b| **b > start).count()
    }

    /// [attempts, conversations] per segment over the day.
    fn day_totals(&self) -> Vec<i64> {
        let mut day = vec![0; 2 * self.segments];
        for (_, v) in &self.hours {
            for (d, x) in day.iter_mut().zip(v.iter()) {
                *d += *x;
            }
        }
        day
    }

    /// caller key -> [last bucket, attempts, segment bits, conversations]
    #[getter]
    fn callers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (k, e) in &self.callers {
            d.set_item(k, PyList::new(py, e.iter())?)?;
        }
        Ok(d)
    }

    #[getter]
    fn action_match<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        json_value(py, &self.action_match)
    }

    #[setter]
    fn set_action_match(&mut self, py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let raw = py.import("orjson")?.call_method1("dumps", (value,))?;
        self.action_match = String::from_utf8(raw.cast::<PyBytes>()?.as_bytes().to_vec())
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(())
    }

    /// Newest folded position per origin partition, as (partition, offset, index).
    #[getter]
    fn origins<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyTuple>>> {
        self.origins.iter().map(|(p, (o, i))| PyTuple::new(py, [*p, *o, *i])).collect()
    }

    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let mut out = Vec::with_capacity(1024);
        self.encode(&mut out);
        PyBytes::new(py, &out)
    }

    #[staticmethod]
    fn from_bytes(raw: &[u8]) -> PyResult<SourceState> {
        SourceState::decode(raw).map_err(PyValueError::new_err)
    }
}
