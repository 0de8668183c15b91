//! Writing JSON by hand: state records and source rows are written once per state per commit
//! and once per re-keyed event, so they skip any intermediate value tree. Floats are written
//! as orjson writes them (shortest round trip, `1.0` for integral values) so a record reads
//! back to the same value on either side.

pub fn float(out: &mut Vec<u8>, x: f64) {
    if x.is_finite() {
        let mut b = ryu::Buffer::new();
        out.extend_from_slice(b.format_finite(x).as_bytes());
    } else {
        out.extend_from_slice(b"null"); // as orjson: JSON has no NaN or infinity
    }
}

/// A slot value: counts stay integers on the wire (`1`, not `1.0`), sums keep a fraction.
pub fn slot(out: &mut Vec<u8>, x: f64) {
    if x.fract() == 0.0 && x.abs() < 9.0e15 {
        int(out, x as i64);
    } else {
        float(out, x);
    }
}

pub fn int(out: &mut Vec<u8>, x: i64) {
    let mut b = itoa::Buffer::new();
    out.extend_from_slice(b.format(x).as_bytes());
}

pub fn boolean(out: &mut Vec<u8>, x: bool) {
    out.extend_from_slice(if x { b"true" } else { b"false" });
}

pub fn string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &c) in bytes.iter().enumerate() {
        let esc: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => {
                out.extend_from_slice(&bytes[start..i]);
                out.extend_from_slice(format!("\\u{:04x}", c).as_bytes());
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

pub fn opt_string(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => string(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// A JSON array written item by item: [`List::next`] puts the separator and hands back the
/// buffer for the item.
pub struct List<'a> {
    out: &'a mut Vec<u8>,
    n: usize,
}

impl<'a> List<'a> {
    pub fn open(out: &'a mut Vec<u8>) -> List<'a> {
        out.push(b'[');
        List { out, n: 0 }
    }

    pub fn next(&mut self) -> &mut Vec<u8> {
        if self.n > 0 {
            self.out.push(b',');
        }
        self.n += 1;
        self.out
    }

    pub fn close(self) {
        self.out.push(b']');
    }
}

/// `[each(item), ...]`.
pub fn list<T>(out: &mut Vec<u8>, items: impl IntoIterator<Item = T>,
               mut each: impl FnMut(&mut Vec<u8>, T)) {
    let mut l = List::open(out);
    for item in items {
        each(l.next(), item);
    }
    l.close();
}

/// `[i0, i1, ...]`.
pub fn ints(out: &mut Vec<u8>, values: impl IntoIterator<Item = i64>) {
    list(out, values, int);
}

/// `[head, s0, s1, ...]`: a bucket (its index, then its slots).
pub fn slot_row(out: &mut Vec<u8>, head: i64, slots: &[f64]) {
    let mut l = List::open(out);
    int(l.next(), head);
    for x in slots {
        slot(l.next(), *x);
    }
    l.close();
}
