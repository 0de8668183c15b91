//! Events re-keyed for the source stage, written straight into batch records per partition
//! of `signaling.sources` (the Python side's `streams.batches.PartitionBatches` documents
//! the grouping, `streams.schema.SourceEvent.row_tail` the row layout).

use crate::event::Event;
use crate::json;
use crate::murmur::partition_for;

/// Where the number stage read an event: (partition, offset, index); (-1, -1, 0) for one that
/// did not come from Kafka: the source stage never skips it.
pub type Where = (i64, i64, i64);

pub struct RowBatches {
    partitions: u32,
    max_events: usize,
    open: Vec<(Vec<u8>, usize)>,
    pending: usize,
    tail: Vec<u8>,
}

impl RowBatches {
    pub fn new(partitions: u32, max_events: usize) -> RowBatches {
        let partitions = partitions.max(1);
        RowBatches {
            partitions,
            max_events: max_events.max(1),
            open: (0..partitions).map(|_| (Vec::new(), 0)).collect(),
            pending: 0,
            tail: Vec::with_capacity(256),
        }
    }

    pub fn pending(&self) -> usize {
        self.pending
    }

    /// The row fields after its key, written once per event and reused for each key.
    pub fn set_tail(&mut self, ev: &Event<'_>, caller_new: bool, caller_trunks: i64, at: Where) {
        let t = &mut self.tail;
        t.clear();
        t.push(b',');
        json::float(t, ev.ts);
        t.push(b',');
        json::string(t, ev.kind.name());
        t.push(b',');
        json::string(t, ev.proto.name());
        t.push(b',');
        json::string(t, &ev.call_id);
        t.push(b',');
        json::string(t, &ev.caller);
        t.push(b',');
        json::string(t, &ev.callee);
        t.push(b',');
        match ev.code {
            Some(c) => json::int(t, c),
            None => t.extend_from_slice(b"null"),
        }
        t.push(b',');
        match ev.duration_s {
            Some(d) => json::float(t, d),
            None => t.extend_from_slice(b"null"),
        }
        t.push(b',');
        json::opt_string(t, ev.trunk.as_deref());
        t.push(b',');
        json::opt_string(t, ev.switch.as_deref());
        t.push(b',');
        json::opt_string(t, ev.attest.as_deref());
        t.push(b',');
        json::boolean(t, caller_new);
        t.push(b',');
        json::int(t, caller_trunks);
        for x in [at.0, at.1, at.2] {
            t.push(b',');
            json::int(t, x);
        }
        t.push(b',');
        json::opt_string(t, ev.caller_class.as_deref());
        t.push(b']');
    }

    /// Add the current tail under `key`; returns a full batch record to send, if it filled.
    pub fn add(&mut self, key: &str) -> Option<(u32, Vec<u8>)> {
        let p = partition_for(key.as_bytes(), self.partitions);
        let (buf, n) = &mut self.open[p as usize];
        buf.push(if *n == 0 { b'[' } else { b',' });
        buf.push(b'[');
        json::string(buf, key);
        buf.extend_from_slice(&self.tail);
        *n += 1;
        self.pending += 1;
        if *n >= self.max_events {
            return Some(self.take(p));
        }
        None
    }

    fn take(&mut self, p: u32) -> (u32, Vec<u8>) {
        let (buf, n) = &mut self.open[p as usize];
        let mut out = std::mem::take(buf);
        out.push(b']');
        self.pending -= *n;
        *n = 0;
        (p, out)
    }

    /// Every open batch, emptied.
    pub fn drain(&mut self) -> Vec<(u32, Vec<u8>)> {
        let mut out = Vec::new();
        for p in 0..self.partitions {
            if self.open[p as usize].1 > 0 {
                out.push(self.take(p));
            }
        }
        out
    }
}
