//! The payload marker: how a receiver learns, from the message alone, which message it got and
//! when it was sent.
//!
//! Every published body is the ASCII text `<seq>:<send_unix_nanos>:` padded with `x` to the
//! payload size, for example `17:1764167000123456789:xxxx`. It is JSON-safe, so Herald delivers
//! it unchanged as a JSON string inside its envelope, and nchan delivers it raw. Receivers never
//! parse the envelope: they scan whatever bytes arrived (a WebSocket frame, an SSE data line, a
//! long-poll body holding several envelopes) for the pattern. The send time is always written
//! with exactly 19 digits and followed by a colon, which nothing else in Herald's or nchan's
//! framing looks like. Sequence 0 marks warm-up traffic, which is never counted.

use std::time::{SystemTime, UNIX_EPOCH};

/// Digits of the send time (nanoseconds since the Unix epoch: 19 digits from 2001 to 2286).
const NANOS_DIGITS: usize = 19;
/// Most digits a `u64` sequence can have.
const MAX_SEQ_DIGITS: usize = 20;

/// One marker found in received bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    /// Per-channel sequence number, from 1; 0 is warm-up traffic.
    pub seq: u64,
    /// When the publisher sent it, in nanoseconds since the Unix epoch.
    pub sent_nanos: u64,
}

/// The wall clock in nanoseconds since the Unix epoch (publisher and receiver share it: they
/// run on the same machine).
pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The body for message `seq` sent at `sent_nanos`, padded with `x` to `size` bytes (never
/// shorter than the marker itself).
pub fn encode(seq: u64, sent_nanos: u64, size: usize) -> String {
    let mut body = format!("{seq}:{sent_nanos:0NANOS_DIGITS$}:");
    if body.len() < size {
        body.extend(std::iter::repeat_n('x', size - body.len()));
    }
    body
}

/// Calls `found` for every marker in `bytes`, in order.
pub fn scan(bytes: &[u8], mut found: impl FnMut(Marker)) {
    for colon in memchr::memchr_iter(b':', bytes) {
        if let Some(marker) = marker_at(bytes, colon) {
            found(marker);
        }
    }
}

/// The marker whose first colon is at `colon`, if there is one.
fn marker_at(bytes: &[u8], colon: usize) -> Option<Marker> {
    let nanos_end = colon + 1 + NANOS_DIGITS;
    if bytes.get(nanos_end) != Some(&b':') {
        return None;
    }
    let sent_nanos = parse_digits(&bytes[colon + 1..nanos_end])?;
    let mut start = colon;
    while start > 0 && bytes[start - 1].is_ascii_digit() && colon - start < MAX_SEQ_DIGITS {
        start -= 1;
    }
    if start == colon || (start > 0 && bytes[start - 1].is_ascii_alphanumeric()) {
        return None;
    }
    let seq = parse_digits(&bytes[start..colon])?;
    Some(Marker { seq, sent_nanos })
}

fn parse_digits(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |acc, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(bytes: &[u8]) -> Vec<Marker> {
        let mut out = Vec::new();
        scan(bytes, |m| out.push(m));
        out
    }

    const T: u64 = 1_764_167_000_123_456_789;

    #[test]
    fn encodes_to_the_exact_size() {
        let body = encode(17, T, 64);
        assert_eq!(body.len(), 64);
        assert!(body.starts_with("17:1764167000123456789:xxx"));
        assert!(body.is_ascii());
    }

    #[test]
    fn never_truncates_the_marker() {
        assert_eq!(encode(123, T, 4), "123:1764167000123456789:");
    }

    #[test]
    fn pads_small_times_to_19_digits() {
        assert_eq!(encode(1, 5, 0), "1:0000000000000000005:");
        assert_eq!(
            all(encode(1, 5, 0).as_bytes()),
            [Marker {
                seq: 1,
                sent_nanos: 5
            }]
        );
    }

    #[test]
    fn finds_a_raw_body() {
        let body = encode(42, T, 100);
        assert_eq!(
            all(body.as_bytes()),
            [Marker {
                seq: 42,
                sent_nanos: T
            }]
        );
    }

    #[test]
    fn finds_markers_inside_herald_envelopes() {
        let one = format!(
            r#"{{"cid":"bench0","id":7,"epoch":"k3f9","data":"{}","time":1764167000123}}"#,
            encode(7, T, 40)
        );
        let two = one.replace("\"7:", "\"8:");
        let body = format!("[{one},{two}]");
        let found = all(body.as_bytes());
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].seq, 7);
        assert_eq!(found[1].seq, 8);
    }

    #[test]
    fn finds_markers_in_sse_and_ws_framing() {
        let sse = format!("id: k3f9:17\ndata: {}\n\n", encode(17, T, 30));
        assert_eq!(
            all(sse.as_bytes()),
            [Marker {
                seq: 17,
                sent_nanos: T
            }]
        );
    }

    #[test]
    fn ignores_lookalikes() {
        assert!(all(b"id: k3f9:17\n").is_empty());
        assert!(
            all(b"a17:1764167000123456789:").is_empty(),
            "seq glued to a word"
        );
        assert!(all(b"17:176416700012345678:").is_empty(), "18 digits");
        assert!(
            all(b"17:17641670001234567890").is_empty(),
            "no closing colon"
        );
        assert!(all(b":1764167000123456789:").is_empty(), "no seq");
        assert!(all(b"").is_empty());
        assert!(all(b":").is_empty());
    }

    #[test]
    fn rejects_overflowing_sequences() {
        assert!(all(b"99999999999999999999:1764167000123456789:").is_empty());
        assert_eq!(
            all(format!("{}:{T}:", u64::MAX).as_bytes())[0].seq,
            u64::MAX
        );
    }

    #[test]
    fn clock_is_plausible() {
        let now = unix_nanos();
        assert!(now > T - 10u64.pow(17));
        assert_eq!(now.to_string().len(), NANOS_DIGITS);
    }
}
