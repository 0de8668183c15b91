//! Per-number windowed counters: the state `streams.features` documents, folded here.
//!
//! One ring of one-minute buckets (only minutes with traffic), a bounded map of recently
//! dialled callees, the trunks the number was seen on, and the decision state the policy
//! keeps for it. Every rule is the Python reference's, in the same order, so counts, sums
//! (float additions in the same sequence) and what is forgotten at a cap are identical:
//! buckets and callees keep insertion order as Python dicts do.

use std::sync::{Arc, RwLock};

use indexmap::IndexMap;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

use crate::event::{Event, Kind, Proto};
use crate::json;
use crate::pyfloat::{floordiv, minute_of};

pub const MINUTE_S: f64 = 60.0;
/// The longest window (`streams.features.RING_MINUTES`).
pub const RING_MINUTES: i64 = 60;
/// Gaps longer than this are pauses between bursts (`MAX_RHYTHM_GAP_S`).
pub const MAX_RHYTHM_GAP_S: f64 = 300.0;

/// Slot order of a bucket: `streams.features` names the same indices (a test holds them
/// equal through [`SLOT_NAMES`]).
pub const SLOT_NAMES: [&str; N_SLOTS] = [
    "ATTEMPTS", "ANSWERED", "RELEASES", "SHORT", "DUR_SUM", "F_UNALLOC", "F_BUSY",
    "F_REJECTED", "F_OTHER", "SEQ", "GAP_N", "GAP_SUM", "GAP_SQ", "ATTEST_A", "ATTEST_C",
];
pub const N_SLOTS: usize = 15;
const ATTEMPTS: usize = 0;
const ANSWERED: usize = 1;
const RELEASES: usize = 2;
const SHORT: usize = 3;
const DUR_SUM: usize = 4;
const F_UNALLOC: usize = 5;
const SEQ: usize = 9;
const GAP_N: usize = 10;
const GAP_SUM: usize = 11;
const GAP_SQ: usize = 12;
const ATTEST_A: usize = 13;
const ATTEST_C: usize = 14;

pub type Bucket = [f64; N_SLOTS];

/// SIP statuses and ISUP causes per fail class, given once by `streams.features` from the
/// sets `streams.schema` defines.
#[derive(Clone, Debug, Default)]
pub struct FailCodes {
    pub sip: [Vec<i64>; 3],
    pub isup: [Vec<i64>; 3],
}

static FAIL_CODES: RwLock<Option<FailCodes>> = RwLock::new(None);

pub fn set_fail_codes(codes: FailCodes) {
    *FAIL_CODES.write().unwrap() = Some(codes);
}

/// The fail class of a failed call (`streams.features.fail_class`): 0 unallocated, 1 busy or
/// no answer, 2 rejected, 3 other; both stages keep their four fail slots in this order.
pub fn fail_slot_of(proto: Proto, code: Option<i64>) -> usize {
    let Some(code) = code else { return 3 };
    let guard = FAIL_CODES.read().unwrap();
    let Some(codes) = guard.as_ref() else { return 3 };
    let sets = match proto {
        Proto::Sip => &codes.sip,
        Proto::Isup => &codes.isup,
    };
    sets.iter().position(|set| set.contains(&code)).unwrap_or(3)
}

/// The bucket slot a failed call counts in.
fn fail_slot(proto: Proto, code: Option<i64>) -> usize {
    F_UNALLOC + fail_slot_of(proto, code)
}

/// `streams.features.FeatureConfig`, read once.
#[derive(Clone, Debug)]
pub struct FoldCfg {
    pub short_call_s: f64,
    pub sequential_max_step: i64,
    pub distinct_callees_cap: usize,
    pub late_grace_s: f64,
    pub caller_new_after_s: f64,
    pub trunks_cap: usize,
    pub conversation_s: f64,
}

impl FoldCfg {
    pub fn from_py(cfg: &Bound<'_, PyAny>) -> PyResult<FoldCfg> {
        Ok(FoldCfg {
            short_call_s: cfg.getattr("short_call_s")?.extract()?,
            sequential_max_step: cfg.getattr("sequential_max_step")?.extract()?,
            distinct_callees_cap: cfg.getattr("distinct_callees_cap")?.extract()?,
            late_grace_s: cfg.getattr("late_grace_s")?.extract()?,
            caller_new_after_s: cfg.getattr("caller_new_after_s")?.extract()?,
            trunks_cap: cfg.getattr("trunks_cap")?.extract()?,
            conversation_s: cfg.getattr("conversation_s")?.extract()?,
        })
    }
}

/// `zlib.crc32` of the callee: a stable key (Python's `hash` is salted per process).
#[inline]
pub fn callee_key(callee: &str) -> u32 {
    crc32fast::hash(callee.as_bytes())
}

/// `int(callee) if callee.isdigit() else -1` (a normalised callee is at most 15 digits).
fn callee_value(callee: &str) -> i64 {
    let b = callee.as_bytes();
    if b.is_empty() || !b.iter().all(|c| c.is_ascii_digit()) {
        return -1;
    }
    callee.parse::<i64>().unwrap_or(-1)
}

const UNKNOWN: &str = "-";
const MAX_TRUNK_ID: usize = 128;

/// `streams.scope.trunk_id`: `<switch>/<trunk>`, `/` in the switch name made `_`, at most
/// 128 characters.
pub fn trunk_id_into(out: &mut String, switch: Option<&str>, trunk: Option<&str>) {
    out.clear();
    let sw = match switch {
        Some(s) if !s.is_empty() => s,
        _ => UNKNOWN,
    };
    let tk = match trunk {
        Some(t) if !t.is_empty() => t,
        _ => UNKNOWN,
    };
    for c in sw.chars() {
        out.push(if c == '/' { '_' } else { c });
    }
    out.push('/');
    out.push_str(tk);
    if out.len() > MAX_TRUNK_ID {
        if let Some((cut, _)) = out.char_indices().nth(MAX_TRUNK_ID) {
            out.truncate(cut);
        }
    }
}

#[pyclass(module = "streams._native")]
#[derive(Clone, Debug)]
pub struct CallerState {
    #[pyo3(get, set)]
    pub hwm_ts: f64,
    /// minute index -> slots, in the order the minutes were first seen
    pub buckets: Vec<(i64, Bucket)>,
    /// callee key -> last minute dialled; the first entry is the least recently dialled
    pub callees: IndexMap<u32, i64>,
    #[pyo3(get, set)]
    pub last_attempt_ts: f64,
    #[pyo3(get, set)]
    pub last_callee: i64,
    #[pyo3(get, set)]
    pub attempts_total: i64,
    /// attempts_total at the last score (score again only when the counters moved)
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
    /// Start of this number's current stretch of activity (after a silence of a day).
    #[pyo3(get, set)]
    pub first_ts: f64,
    /// trunk id -> [last minute, attempts, conversations] through it in the last day
    pub trunks: Vec<(Arc<str>, [i64; 3])>,
    pub last_trunk: Arc<str>,
    /// (partition, offset, index) of the newest event folded in (`streams.position`)
    pub folded: Option<(i64, i64, i64)>,
}

impl Default for CallerState {
    fn default() -> Self {
        CallerState {
            hwm_ts: 0.0,
            buckets: Vec::new(),
            callees: IndexMap::new(),
            last_attempt_ts: 0.0,
            last_callee: -1,
            attempts_total: 0,
            scored_attempts: 0,
            action: String::new(),
            action_until: 0.0,
            action_score: 0.0,
            action_dry: false,
            first_ts: 0.0,
            trunks: Vec::new(),
            last_trunk: Arc::from(""),
            folded: None,
        }
    }
}

impl CallerState {
    /// Fold one event in; false if it is too late to count. `trunk` is the event's trunk id.
    pub fn add_event(&mut self, ev: &Event<'_>, trunk: &Arc<str>, cfg: &FoldCfg) -> bool {
        let ts = ev.ts;
        if ts < self.hwm_ts - cfg.late_grace_s {
            return false;
        }
        let minute = minute_of(ts);
        if ts > self.hwm_ts {
            let moved = minute != minute_of(self.hwm_ts);
            self.hwm_ts = ts;
            if moved {
                self.evict(minute);
            }
        }
        let at = match self.buckets.iter().rposition(|(m, _)| *m == minute) {
            Some(i) => i,
            None => {
                self.buckets.push((minute, [0.0; N_SLOTS]));
                self.buckets.len() - 1
            }
        };
        match ev.kind {
            Kind::Attempt => self.add_attempt(ev, trunk, minute, at, cfg),
            Kind::Answer => self.buckets[at].1[ANSWERED] += 1.0,
            Kind::Release => {
                let duration = ev.duration_s.unwrap_or(0.0);
                let b = &mut self.buckets[at].1;
                b[RELEASES] += 1.0;
                b[DUR_SUM] += duration;
                if duration < cfg.short_call_s {
                    b[SHORT] += 1.0;
                } else if duration >= cfg.conversation_s {
                    if let Some((_, e)) = self.trunks.iter_mut().find(|(t, _)| **t == **trunk) {
                        e[2] += 1;
                    }
                }
            }
            Kind::Fail => self.buckets[at].1[fail_slot(ev.proto, ev.code)] += 1.0,
        }
        true
    }

    fn add_attempt(&mut self, ev: &Event<'_>, trunk: &Arc<str>, minute: i64, at: usize,
                   cfg: &FoldCfg) {
        let ts = ev.ts;
        self.buckets[at].1[ATTEMPTS] += 1.0;
        self.attempts_total += 1;
        if self.first_ts == 0.0 || ts - self.last_attempt_ts > cfg.caller_new_after_s {
            self.first_ts = ts;
        }
        self.add_trunk(trunk, minute, cfg);
        let b = &mut self.buckets[at].1;
        match ev.attest.as_deref() {
            Some("A") => b[ATTEST_A] += 1.0,
            Some("C") => b[ATTEST_C] += 1.0,
            _ => {}
        }
        let value = callee_value(&ev.callee);
        if value >= 0 && self.last_callee >= 0 {
            let step = (value - self.last_callee).abs();
            if 0 < step && step <= cfg.sequential_max_step {
                b[SEQ] += 1.0;
            }
        }
        self.last_callee = value;
        if self.last_attempt_ts != 0.0 && ts >= self.last_attempt_ts {
            let gap = ts - self.last_attempt_ts;
            if gap <= MAX_RHYTHM_GAP_S {
                b[GAP_N] += 1.0;
                b[GAP_SUM] += gap;
                b[GAP_SQ] += gap * gap;
            }
        }
        self.last_attempt_ts = self.last_attempt_ts.max(ts);
        let key = callee_key(&ev.callee);
        match self.callees.get(&key).copied() {
            Some(last) => {
                if minute > last {
                    // newest last: the first key is the least recently dialled
                    self.callees.shift_remove(&key);
                    self.callees.insert(key, minute);
                }
            }
            None => {
                if self.callees.len() >= cfg.distinct_callees_cap && !self.callees.is_empty() {
                    self.callees.shift_remove_index(0);
                }
                self.callees.insert(key, minute);
            }
        }
    }

    fn add_trunk(&mut self, trunk: &Arc<str>, minute: i64, cfg: &FoldCfg) {
        let horizon = minute - floordiv(cfg.caller_new_after_s, MINUTE_S);
        self.trunks.retain(|(_, e)| e[0] > horizon);
        let at = match self.trunks.iter().position(|(t, _)| **t == **trunk) {
            Some(i) => i,
            None => {
                if self.trunks.len() >= cfg.trunks_cap && !self.trunks.is_empty() {
                    // min() keeps the first of equal minutes, as Python's does
                    let mut oldest = 0;
                    for (i, (_, e)) in self.trunks.iter().enumerate() {
                        if e[0] < self.trunks[oldest].1[0] {
                            oldest = i;
                        }
                    }
                    self.trunks.remove(oldest);
                }
                self.trunks.push((trunk.clone(), [minute, 0, 0]));
                self.trunks.len() - 1
            }
        };
        let e = &mut self.trunks[at].1;
        e[0] = e[0].max(minute);
        e[1] += 1;
        self.last_trunk = trunk.clone();
    }

    fn evict(&mut self, now_minute: i64) {
        let horizon = now_minute - RING_MINUTES;
        let before = self.buckets.len();
        self.buckets.retain(|(m, _)| *m > horizon);
        if self.buckets.len() != before {
            self.callees.retain(|_, m| *m > horizon);
        }
    }

    pub fn hwm_minute(&self) -> i64 {
        minute_of(self.hwm_ts)
    }

    /// Slot sums over the newest `minutes` minutes, added in bucket order.
    pub fn window_sums(&self, minutes: i64) -> Bucket {
        let start = self.hwm_minute() - minutes;
        let mut total = [0.0; N_SLOTS];
        for (m, b) in &self.buckets {
            if *m > start {
                for i in 0..N_SLOTS {
                    total[i] += b[i];
                }
            }
        }
        total
    }

    pub fn distinct(&self, minutes: i64) -> i64 {
        let start = self.hwm_minute() - minutes;
        self.callees.values().filter(|m| **m > start).count() as i64
    }

    pub fn attempts_in(&self, minutes: i64) -> i64 {
        let start = self.hwm_minute() - minutes;
        let mut n = 0.0;
        for (m, b) in &self.buckets {
            if *m > start {
                n += b[ATTEMPTS];
            }
        }
        n as i64
    }

    pub fn new_stretch(&self, ts: f64, caller_new_after_s: f64) -> bool {
        ts - self.first_ts < caller_new_after_s
    }

    /// `CallerState.to_bytes` of the Python reference: one positional JSON list.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut l = json::List::open(out);
        json::float(l.next(), self.hwm_ts);
        json::list(l.next(), &self.buckets, |o, (m, b)| json::slot_row(o, *m, b));
        json::list(l.next(), &self.callees, |o, (k, m)| json::ints(o, [*k as i64, *m]));
        json::float(l.next(), self.last_attempt_ts);
        json::int(l.next(), self.last_callee);
        json::int(l.next(), self.attempts_total);
        json::int(l.next(), self.scored_attempts);
        json::string(l.next(), &self.action);
        json::float(l.next(), self.action_until);
        json::float(l.next(), self.action_score);
        json::boolean(l.next(), self.action_dry);
        json::float(l.next(), self.first_ts);
        json::list(l.next(), &self.trunks, |o, (t, e)| {
            let mut row = json::List::open(o);
            json::string(row.next(), t);
            for x in e {
                json::int(row.next(), *x);
            }
            row.close();
        });
        json::string(l.next(), &self.last_trunk);
        match self.folded {
            None => l.next().extend_from_slice(b"null"),
            Some((p, o, i)) => json::ints(l.next(), [p, o, i]),
        }
        l.close();
    }

    /// Reads what [`CallerState::encode`] and every earlier Python version wrote: 11 fields
    /// (before the source view), 14 (before exact recovery), 15.
    pub fn decode(raw: &[u8]) -> Result<CallerState, String> {
        use serde_json::Value;
        let row: Vec<Value> = serde_json::from_slice(raw).map_err(|e| e.to_string())?;
        if row.len() < 11 {
            return Err(format!("state has {} fields, expected at least 11", row.len()));
        }
        let f = |v: &Value| -> Result<f64, String> {
            v.as_f64().ok_or_else(|| format!("expected a number, got {v}"))
        };
        let i = |v: &Value| -> Result<i64, String> {
            v.as_i64().or_else(|| v.as_f64().map(|x| x as i64))
                .ok_or_else(|| format!("expected an integer, got {v}"))
        };
        let arr = |v: &Value| -> Result<Vec<Value>, String> {
            v.as_array().cloned().ok_or_else(|| format!("expected a list, got {v}"))
        };
        let mut st = CallerState { hwm_ts: f(&row[0])?, ..CallerState::default() };
        for b in arr(&row[1])? {
            let b = arr(&b)?;
            let mut slots = [0.0; N_SLOTS];
            for (k, x) in b.iter().skip(1).take(N_SLOTS).enumerate() {
                slots[k] = f(x)?;
            }
            st.buckets.push((i(&b[0])?, slots));
        }
        for kv in arr(&row[2])? {
            let kv = arr(&kv)?;
            st.callees.insert(i(&kv[0])? as u32, i(&kv[1])?);
        }
        st.last_attempt_ts = f(&row[3])?;
        st.last_callee = i(&row[4])?;
        st.attempts_total = i(&row[5])?;
        st.scored_attempts = i(&row[6])?;
        st.action = row[7].as_str().unwrap_or("").to_string();
        st.action_until = f(&row[8])?;
        st.action_score = f(&row[9])?;
        st.action_dry = row[10].as_bool().unwrap_or(false);
        // Fields added for the source view: states written before them read as a number
        // whose stretch began at its newest event, seen on no trunk yet.
        if row.len() >= 14 {
            st.first_ts = f(&row[11])?;
            for r in arr(&row[12])? {
                let r = arr(&r)?;
                let name = match &r[0] {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                st.trunks.push((Arc::from(name.as_str()), [i(&r[1])?, i(&r[2])?, i(&r[3])?]));
            }
            st.last_trunk = Arc::from(row[13].as_str().unwrap_or(""));
        } else {
            st.first_ts = st.hwm_ts;
        }
        // Added for exact recovery; older states read as "nothing known folded".
        if row.len() >= 15 {
            if let Some(p) = row[14].as_array() {
                if p.len() >= 3 {
                    st.folded = Some((i(&p[0])?, i(&p[1])?, i(&p[2])?));
                }
            }
        }
        Ok(st)
    }
}

/// A Python `SignalingEvent` (or anything with its attributes) as an [`Event`].
pub fn event_from_py<'py>(ev: &Bound<'py, PyAny>) -> PyResult<Event<'static>> {
    use std::borrow::Cow;
    let s = |name: &str| -> PyResult<String> { ev.getattr(name)?.extract::<String>() };
    let opt = |name: &str| -> PyResult<Option<Cow<'static, str>>> {
        Ok(ev.getattr(name)?.extract::<Option<String>>()?.map(Cow::Owned))
    };
    let proto: String = s("proto")?;
    let kind: String = s("kind")?;
    Ok(Event {
        ts: ev.getattr("ts")?.extract()?,
        proto: Proto::parse(&proto)
            .ok_or_else(|| PyValueError::new_err(format!("proto {proto:?}")))?,
        kind: Kind::parse(&kind).ok_or_else(|| PyValueError::new_err(format!("kind {kind:?}")))?,
        call_id: Cow::Owned(s("call_id")?),
        caller: Cow::Owned(s("caller")?),
        callee: Cow::Owned(s("callee")?),
        code: ev.getattr("code")?.extract()?,
        duration_s: ev.getattr("duration_s")?.extract()?,
        trunk: opt("trunk")?,
        switch: opt("switch")?,
        attest: opt("attest")?,
        caller_class: opt("caller_class")?,
    })
}

/// The Python face of the state: what `streams.features` and the detector read and set.
#[pymethods]
impl CallerState {
    #[new]
    fn py_new() -> Self {
        CallerState::default()
    }

    /// Fold one event in (a `SignalingEvent`); False if it is too late to count.
    fn add(&mut self, ev: &Bound<'_, PyAny>, cfg: &Bound<'_, PyAny>) -> PyResult<bool> {
        let event = event_from_py(ev)?;
        let cfg = FoldCfg::from_py(cfg)?;
        let mut id = String::new();
        trunk_id_into(&mut id, event.switch.as_deref(), event.trunk.as_deref());
        Ok(self.add_event(&event, &Arc::from(id.as_str()), &cfg))
    }

    #[getter(hwm_minute)]
    fn py_hwm_minute(&self) -> i64 {
        self.hwm_minute()
    }

    /// Slot sums over the newest `minutes` minutes (ending at this caller's newest event).
    fn window(&self, minutes: i64) -> Vec<f64> {
        self.window_sums(minutes).to_vec()
    }

    fn distinct_callees(&self, minutes: i64) -> i64 {
        self.distinct(minutes)
    }

    fn attempts(&self, minutes: i64) -> i64 {
        self.attempts_in(minutes)
    }

    /// The number had not called for a day before its current stretch, begun < a day ago.
    fn is_new(&self, ts: f64, cfg: &Bound<'_, PyAny>) -> PyResult<bool> {
        Ok(self.new_stretch(ts, cfg.getattr("caller_new_after_s")?.extract()?))
    }

    /// No traffic within the longest window: the state can be forgotten.
    fn is_idle(&self, now_ts: f64) -> bool {
        now_ts - self.hwm_ts > (RING_MINUTES as f64) * MINUTE_S && now_ts > self.action_until
    }

    /// A trunk other than the newest attempt's where this number holds conversations (its
    /// owner talks there), or "": then calls on another trunk are probably spoofed.
    #[pyo3(signature = (min_share = 0.2))]
    fn owner_elsewhere(&self, min_share: f64) -> String {
        for (t, e) in &self.trunks {
            let (attempts, talks) = (e[1], e[2]);
            if **t != *self.last_trunk && talks >= 1
                && (talks as f64) >= min_share * attempts as f64 {
                return t.to_string();
            }
        }
        String::new()
    }

    #[getter]
    fn last_trunk(&self) -> String {
        self.last_trunk.to_string()
    }

    #[getter]
    fn buckets<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (m, b) in &self.buckets {
            d.set_item(m, PyList::new(py, b.iter())?)?;
        }
        Ok(d)
    }

    #[getter]
    fn callees<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (k, m) in &self.callees {
            d.set_item(k, m)?;
        }
        Ok(d)
    }

    #[getter]
    fn trunks<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (t, e) in &self.trunks {
            d.set_item(t.as_ref(), PyList::new(py, e.iter())?)?;
        }
        Ok(d)
    }

    #[getter]
    fn folded<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyTuple>>> {
        self.folded.map(|(p, o, i)| PyTuple::new(py, [p, o, i])).transpose()
    }

    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let mut out = Vec::with_capacity(256);
        self.encode(&mut out);
        PyBytes::new(py, &out)
    }

    #[staticmethod]
    fn from_bytes(raw: &[u8]) -> PyResult<CallerState> {
        CallerState::decode(raw).map_err(|e| PyValueError::new_err(format!("bad state: {e}")))
    }
}
