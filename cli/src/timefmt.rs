//! Timestamps printed the way the reference `ltx` tool prints them (Go's time layouts).

use jiff::Timestamp;

/// Go's `time.RFC3339Nano` of a millisecond Unix time: fraction with trailing zeros dropped.
pub fn rfc3339_nano_ms(ms: i64) -> String {
    match Timestamp::from_millisecond(ms) {
        Ok(ts) => ts.to_string(),
        Err(_) => format!("(out of range: {ms})"),
    }
}

/// Go's `time.RFC3339` of a millisecond Unix time: whole seconds.
pub fn rfc3339_ms(ms: i64) -> String {
    match Timestamp::from_second(ms.div_euclid(1000)) {
        Ok(ts) => ts.to_string(),
        Err(_) => format!("(out of range: {ms})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_go() {
        assert_eq!(rfc3339_nano_ms(1_795_411_769_332), "2026-11-23T05:29:29.332Z");
        assert_eq!(rfc3339_nano_ms(1_795_411_769_330), "2026-11-23T05:29:29.33Z");
        assert_eq!(rfc3339_nano_ms(1_795_411_769_000), "2026-11-23T05:29:29Z");
        assert_eq!(rfc3339_nano_ms(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_ms(1_795_411_769_332), "2026-11-23T05:29:29Z");
    }
}
