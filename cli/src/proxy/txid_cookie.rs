//! The `__txid` cookie (LiteFS's name and format): the TXID of the tracked database after a
//! client's last write, so that the client's next read on a replica waits until the replica
//! has that transaction.

use std::time::Duration;

use axum::http::HeaderMap;
use axum::http::header::COOKIE;

/// The cookie's name.
pub const NAME: &str = "__txid";

/// The TXID a request's `__txid` cookie names; `None` without one, or when it is not 16 hex
/// digits (LiteFS then proxies as if there were none).
#[must_use]
pub fn from_request(headers: &HeaderMap) -> Option<u64> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == NAME)
        .and_then(|(_, value)| parse(value.trim_matches('"')))
}

/// A TXID as LiteFS writes it: exactly 16 hex digits.
fn parse(value: &str) -> Option<u64> {
    if value.len() != 16 {
        return None;
    }
    u64::from_str_radix(value, 16).ok().filter(|txid| *txid != 0)
}

/// The `Set-Cookie` value for `txid`, expiring `expiry` from `now`.
#[must_use]
pub fn set_cookie(txid: u64, now: jiff::Timestamp, expiry: Duration) -> String {
    let expires = now.checked_add(expiry).unwrap_or(now);
    let date = jiff::fmt::rfc2822::DateTimePrinter::new().timestamp_to_rfc9110_string(&expires).unwrap_or_default();
    format!("{NAME}={txid:016x}; Path=/; Expires={date}; HttpOnly")
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(cookies: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for c in cookies {
            map.append(COOKIE, HeaderValue::from_str(c).expect("header"));
        }
        map
    }

    #[test]
    fn the_txid_is_found_among_other_cookies_and_headers() {
        assert_eq!(from_request(&headers(&["a=1; __txid=00000000000000ff; b=2"])), Some(255));
        assert_eq!(from_request(&headers(&["a=1", "__txid=0000000000000010"])), Some(16));
        assert_eq!(from_request(&headers(&["a=1"])), None);
        assert_eq!(from_request(&HeaderMap::new()), None);
    }

    #[test]
    fn anything_but_sixteen_hex_digits_counts_as_no_cookie() {
        assert_eq!(from_request(&headers(&["__txid=ff"])), None);
        assert_eq!(from_request(&headers(&["__txid=000000000000000g"])), None);
        assert_eq!(from_request(&headers(&["__txid=0000000000000000"])), None);
        assert_eq!(from_request(&headers(&["x__txid=0000000000000001"])), None);
    }

    #[test]
    fn the_set_cookie_value_is_litefs_s() {
        let now: jiff::Timestamp = "2026-11-30T22:00:00Z".parse().expect("timestamp");
        assert_eq!(
            set_cookie(0x2a, now, Duration::from_secs(300)),
            "__txid=000000000000002a; Path=/; Expires=Mon, 30 Nov 2026 22:05:00 GMT; HttpOnly"
        );
    }
}
