//! Python's arithmetic where it differs from Rust's: the fold must count exactly what the
//! Python reference counted (`int(ts // 60)` is not `(ts / 60.0).floor()` in every case).

/// `int(x // y)` for Python floats (CPython's `float_floor_div`, `Objects/floatobject.c`).
pub fn floordiv(vx: f64, wx: f64) -> i64 {
    let m = vx % wx; // C fmod
    let mut div = (vx - m) / wx;
    if m != 0.0 && ((wx < 0.0) != (m < 0.0)) {
        div -= 1.0;
    }
    let floordiv = if div != 0.0 {
        let mut f = div.floor();
        if div - f > 0.5 {
            f += 1.0;
        }
        f
    } else {
        (0.0f64).copysign(vx / wx)
    };
    floordiv as i64
}

/// Epoch minute of an event time, as `int(ts // 60)`.
#[inline]
pub fn minute_of(ts: f64) -> i64 {
    floordiv(ts, 60.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_division_like_python() {
        assert_eq!(floordiv(119.999, 60.0), 1);
        assert_eq!(floordiv(120.0, 60.0), 2);
        assert_eq!(floordiv(-0.5, 60.0), -1);
        assert_eq!(floordiv(0.0, 60.0), 0);
        assert_eq!(floordiv(86_400.0, 60.0), 1440);
    }
}
