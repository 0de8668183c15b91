//! `streams._native`: the number stage's per-event work, compiled.
//!
//! Python stays the reference and the orchestrator: `streams.features` documents the state
//! and computes the features, `streams.schema` judges every event the fast path here does
//! not take, `streams.detector` scores, decides and writes. What lives here is what runs for
//! every event: decoding records, the common case of the event check, the per-number
//! counters, the prefix and trunk pools and the re-keyed rows for the source stage.
//! See `streams/native/README.md` for why and how it is built.

use pyo3::prelude::*;

mod event;
mod fold;
mod hot;
mod json;
mod murmur;
mod pool;
mod pyfloat;
mod rows;
mod snapshot;
mod source_fold;
mod source_state;
mod state;

/// Give the fail classes their codes (`streams.schema` defines them; `streams.features`
/// calls this once at import): each argument is (unallocated, busy or no answer, rejected).
#[pyfunction]
fn set_fail_codes(sip: [Vec<i64>; 3], isup: [Vec<i64>; 3]) {
    state::set_fail_codes(state::FailCodes { sip, isup });
}

/// Kafka's partition of a key (murmur2), as `streams.topics.partition_for`.
#[pyfunction]
fn partition_for(key: &[u8], partitions: u32) -> PyResult<u32> {
    if partitions == 0 {
        return Err(pyo3::exceptions::PyValueError::new_err("partitions must be at least 1"));
    }
    Ok(murmur::partition_for(key, partitions))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<state::CallerState>()?;
    m.add_class::<pool::PyPool>()?;
    m.add_class::<fold::NumberFold>()?;
    m.add_class::<snapshot::Snapshot>()?;
    m.add_class::<source_state::SourceState>()?;
    m.add_class::<source_fold::SourceFold>()?;
    m.add_function(wrap_pyfunction!(set_fail_codes, m)?)?;
    m.add_function(wrap_pyfunction!(partition_for, m)?)?;
    m.add("SLOT_NAMES", state::SLOT_NAMES.to_vec())?;
    m.add("SOURCE_SLOT_NAMES", source_state::SOURCE_SLOT_NAMES.to_vec())?;
    Ok(())
}
