//! Per-prefix and per-trunk aggregates (`streams.features.PoolCounters` documents them):
//! distinct active callers and their attempts per hour, in the number stage's memory.

use std::collections::{BTreeMap, HashMap};

use pyo3::prelude::*;

use crate::event::{Event, Kind};
use crate::pyfloat::minute_of;
use crate::state::{event_from_py, RING_MINUTES};

const DIGITS_MAX: usize = 15;
const LEN_SHIFT: u32 = 50;

/// A caller as a pool remembers it: its digits as a number tagged with their count (so
/// `0110` and `110` stay apart), which costs 8 bytes instead of a string per caller per pool.
/// Callers folded into pools are normalised numbers (at most 15 digits: below 2^50, the count
/// above it); anything else is hashed.
#[inline]
pub fn caller_key(caller: &str) -> u64 {
    let b = caller.as_bytes();
    if !b.is_empty() && b.len() <= DIGITS_MAX && b.iter().all(|c| c.is_ascii_digit()) {
        let mut v: u64 = 0;
        for c in b {
            v = v * 10 + (c - b'0') as u64;
        }
        return v | ((b.len() as u64) << LEN_SHIFT);
    }
    // not digits: a 64-bit hash with the top bit set (no digit key has it)
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for c in b {
        h ^= *c as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h | (1 << 63)
}

/// (callers, attempts, answer ratio, short-call ratio) over the window: the four pool
/// features (`streams.features` names them).
pub type Summary = (f64, f64, f64, f64);

#[derive(Clone, Debug)]
pub struct Pool {
    /// Distinct callers remembered at most.
    cap: usize,
    /// caller -> newest minute seen
    callers: HashMap<u64, i64>,
    /// minute -> callers whose newest minute it was when seen (stale once they call again)
    by_minute: BTreeMap<i64, Vec<u64>>,
    attempts: BTreeMap<i64, i64>,
    answered: BTreeMap<i64, i64>,
    short: BTreeMap<i64, i64>,
    releases: BTreeMap<i64, i64>,
}

fn ratio(num: f64, den: f64) -> f64 {
    if den > 0.0 {
        num / den
    } else {
        0.0
    }
}

fn bump(map: &mut BTreeMap<i64, i64>, minute: i64) {
    *map.entry(minute).or_insert(0) += 1;
}

impl Pool {
    pub fn new(cap: usize) -> Pool {
        Pool {
            cap: cap.max(1),
            callers: HashMap::new(),
            by_minute: BTreeMap::new(),
            attempts: BTreeMap::new(),
            answered: BTreeMap::new(),
            short: BTreeMap::new(),
            releases: BTreeMap::new(),
        }
    }

    pub fn add(&mut self, ev: &Event<'_>, caller: u64, short_call_s: f64) {
        let minute = minute_of(ev.ts);
        match ev.kind {
            Kind::Attempt => {
                let seen = self.callers.get(&caller).copied();
                if seen.map_or(true, |s| minute > s) {
                    if seen.is_none() && self.callers.len() >= self.cap {
                        self.forget_oldest();
                    }
                    self.callers.insert(caller, minute);
                    self.by_minute.entry(minute).or_default().push(caller);
                }
                bump(&mut self.attempts, minute);
            }
            Kind::Answer => bump(&mut self.answered, minute),
            Kind::Release => {
                bump(&mut self.releases, minute);
                if ev.duration_s.unwrap_or(0.0) < short_call_s {
                    bump(&mut self.short, minute);
                }
            }
            Kind::Fail => {}
        }
    }

    pub fn summary(&mut self, now_minute: i64, minutes: i64) -> Summary {
        let start = now_minute - minutes;
        self.evict(start);
        let attempts: i64 = self.attempts.values().sum();
        let releases: i64 = self.releases.values().sum();
        let answered: i64 = self.answered.values().sum();
        let short: i64 = self.short.values().sum();
        (
            self.callers.len() as f64,
            attempts as f64,
            ratio(answered as f64, attempts as f64).min(1.0),
            ratio(short as f64, releases as f64),
        )
    }

    /// True when nothing happened after minute `start` (the pool can be forgotten).
    pub fn idle_since(&mut self, start: i64) -> bool {
        self.evict(start);
        self.callers.is_empty() && self.attempts.is_empty() && self.releases.is_empty()
    }

    fn evict(&mut self, start: i64) {
        for map in [&mut self.attempts, &mut self.answered, &mut self.short, &mut self.releases] {
            let keep = map.split_off(&(start + 1));
            *map = keep;
        }
        let keep = self.by_minute.split_off(&(start + 1));
        let old = std::mem::replace(&mut self.by_minute, keep);
        for (minute, callers) in old {
            for c in callers {
                if self.callers.get(&c) == Some(&minute) {
                    self.callers.remove(&c);
                }
            }
        }
    }

    /// At the cap: forget one caller of the oldest minute (skipping stale entries).
    fn forget_oldest(&mut self) {
        while let Some(mut entry) = self.by_minute.first_entry() {
            let minute = *entry.key();
            let bucket = entry.get_mut();
            while let Some(c) = bucket.pop() {
                if self.callers.get(&c) == Some(&minute) {
                    self.callers.remove(&c);
                    if bucket.is_empty() {
                        entry.remove();
                    }
                    return;
                }
            }
            entry.remove();
        }
    }
}

/// The digits a [`caller_key`] was made from (None for a hashed one).
fn caller_digits(key: u64) -> Option<String> {
    if key >> 63 == 1 {
        return None;
    }
    let len = (key >> LEN_SHIFT) as usize;
    Some(format!("{:0len$}", key & ((1 << LEN_SHIFT) - 1)))
}

/// The Python face of a pool (tests and `streams.features` read it this way).
#[pyclass(name = "PoolCounters", module = "streams._native")]
pub struct PyPool {
    pub pool: Pool,
}

#[pymethods]
impl PyPool {
    #[new]
    fn py_new(cap: usize) -> Self {
        PyPool { pool: Pool::new(cap) }
    }

    fn add(&mut self, ev: &Bound<'_, PyAny>, short_call_s: f64) -> PyResult<()> {
        let event = event_from_py(ev)?;
        self.pool.add(&event, caller_key(&event.caller), short_call_s);
        Ok(())
    }

    /// (callers, attempts, answer ratio, short-call ratio) over the `minutes` before
    /// `now_minute`: named by ``streams.features.pool_features``.
    #[pyo3(signature = (now_minute, minutes = RING_MINUTES))]
    fn summary(&mut self, now_minute: i64, minutes: i64) -> Summary {
        self.pool.summary(now_minute, minutes)
    }

    fn idle_since(&mut self, start: i64) -> bool {
        self.pool.idle_since(start)
    }

    /// The callers remembered (their numbers).
    #[getter]
    fn callers(&self) -> Vec<String> {
        self.pool.callers.keys().filter_map(|k| caller_digits(*k)).collect()
    }
}
