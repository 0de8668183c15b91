//! One signaling event as the fold reads it, and the fast path of the event check.
//!
//! The Python check (`streams.schema.EventValidator.check`) is the reference: it names every
//! reason an event is refused. The fast path here accepts only what that check accepts
//! unchanged (every field of its exact type, numbers already E.164 digits) and defers
//! anything else to it, so an event is never judged two ways: a deferred item is checked in
//! Python, which either dead-letters it or hands back the event it made.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::Number;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Attempt,
    Answer,
    Release,
    Fail,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "attempt" => Some(Kind::Attempt),
            "answer" => Some(Kind::Answer),
            "release" => Some(Kind::Release),
            "fail" => Some(Kind::Fail),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Kind::Attempt => "attempt",
            Kind::Answer => "answer",
            Kind::Release => "release",
            Kind::Fail => "fail",
        }
    }
    pub fn index(self) -> usize {
        self as usize
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Proto {
    Sip,
    Isup,
}

impl Proto {
    pub fn parse(s: &str) -> Option<Proto> {
        match s {
            "sip" => Some(Proto::Sip),
            "isup" => Some(Proto::Isup),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Proto::Sip => "sip",
            Proto::Isup => "isup",
        }
    }
    pub fn index(self) -> usize {
        self as usize
    }
}

/// An event that passed the check: the fields of `streams.schema.SignalingEvent`.
#[derive(Clone, Debug)]
pub struct Event<'a> {
    pub ts: f64,
    pub proto: Proto,
    pub kind: Kind,
    pub call_id: Cow<'a, str>,
    pub caller: Cow<'a, str>,
    pub callee: Cow<'a, str>,
    pub code: Option<i64>,
    pub duration_s: Option<f64>,
    pub trunk: Option<Cow<'a, str>>,
    pub switch: Option<Cow<'a, str>>,
    pub attest: Option<Cow<'a, str>>,
    /// None: the caller is a number; else `withheld` / `invalid` (no per-number state).
    pub caller_class: Option<Cow<'a, str>>,
}

/// An event object as it is on the wire. Strings are borrowed from the record: one with
/// escapes fails to borrow and the item is deferred to the Python check (rare: probes write
/// plain digits and names).
#[derive(Deserialize)]
pub struct Wire<'a> {
    #[serde(default)]
    v: Option<Number>,
    #[serde(default)]
    ts: Option<Number>,
    #[serde(default, borrow)]
    proto: Option<&'a str>,
    #[serde(default, borrow)]
    kind: Option<&'a str>,
    #[serde(default, borrow)]
    call_id: Option<&'a str>,
    #[serde(default, borrow)]
    caller: Option<&'a str>,
    #[serde(default, borrow)]
    callee: Option<&'a str>,
    #[serde(default)]
    code: Option<Number>,
    #[serde(default)]
    duration_s: Option<Number>,
    #[serde(default, borrow)]
    trunk: Option<&'a str>,
    #[serde(default, borrow)]
    switch: Option<&'a str>,
    #[serde(default, borrow)]
    attest: Option<&'a str>,
    #[serde(default, borrow)]
    caller_class: Option<&'a str>,
}

/// What the fast path needs of the deployment (the validator's settings and number plan).
#[derive(Clone, Debug)]
pub struct Checks {
    pub max_future_skew_s: f64,
    pub max_duration_s: f64,
    /// The plan's international and national prefixes: a number starting with one is not
    /// E.164 yet and goes to the Python normaliser.
    pub dial_prefixes: Vec<String>,
}

pub const SCHEMA_VERSION: u64 = 1;
const E164_MAX_DIGITS: usize = 15;
const SHORT_CODE_MAX_DIGITS: usize = 6;
const CALLER_TEXT_MAX: usize = 64;
const CALLER_CLASSES: [&str; 2] = ["withheld", "invalid"];
const ATTESTATIONS: [&str; 3] = ["A", "B", "C"];

/// A JSON number as Python's `float()` of what orjson decoded (`type(x) in (int, float)`).
fn as_float(n: &Number) -> f64 {
    n.as_f64().unwrap_or(f64::NAN)
}

impl Checks {
    /// `NumberPlan.normalise`'s first line: digits that are E.164 already pass unchanged.
    pub fn is_e164(&self, raw: &str) -> bool {
        let b = raw.as_bytes();
        b.len() > SHORT_CODE_MAX_DIGITS
            && b.len() <= E164_MAX_DIGITS
            && b.iter().all(|c| c.is_ascii_digit())
            && b[0] != b'0'
            && !self.dial_prefixes.iter().any(|p| raw.starts_with(p.as_str()))
    }

    /// The event, if the reference check would accept `w` and return it unchanged; None
    /// sends the item to the Python check.
    pub fn accept<'a>(&self, w: Wire<'a>, now: f64) -> Option<Event<'a>> {
        let v = w.v?;
        if v.as_u64() != Some(SCHEMA_VERSION) {
            return None;
        }
        let ts_n = w.ts?;
        let ts = as_float(&ts_n);
        if !ts.is_finite() || ts <= 0.0 || ts > now + self.max_future_skew_s {
            return None;
        }
        let proto = Proto::parse(w.proto?)?;
        let kind = Kind::parse(w.kind?)?;
        let call_id = w.call_id?;
        if call_id.is_empty() {
            return None;
        }
        let code = match w.code {
            None => None,
            Some(n) => {
                let c = n.as_i64()?; // an integer on the wire (404.0 is a float: refused)
                if !(0..=999).contains(&c) {
                    return None;
                }
                Some(c)
            }
        };
        let duration_s = match w.duration_s {
            None => None,
            Some(n) => {
                let d = as_float(&n);
                if !d.is_finite() || d < 0.0 || d > self.max_duration_s {
                    return None;
                }
                Some(d)
            }
        };
        if let Some(a) = w.attest {
            if !ATTESTATIONS.contains(&a) {
                return None;
            }
        }
        let raw_caller = w.caller?;
        let raw_callee = w.callee?;
        if let Some(k) = w.caller_class {
            if !CALLER_CLASSES.contains(&k) || raw_caller.chars().count() > CALLER_TEXT_MAX {
                return None;
            }
        } else if !self.is_e164(raw_caller) {
            return None;
        }
        if !self.is_e164(raw_callee) {
            return None;
        }
        Some(Event {
            ts,
            proto,
            kind,
            call_id: Cow::Borrowed(call_id),
            caller: Cow::Borrowed(raw_caller),
            callee: Cow::Borrowed(raw_callee),
            code,
            duration_s,
            trunk: w.trunk.map(Cow::Borrowed),
            switch: w.switch.map(Cow::Borrowed),
            attest: w.attest.map(Cow::Borrowed),
            caller_class: w.caller_class.map(Cow::Borrowed),
        })
    }
}
