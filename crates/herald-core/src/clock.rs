//! Wall-clock time for message timestamps and history expiry.
//!
//! Envelopes carry `time` as milliseconds since the Unix epoch, and history ages are compared
//! against the same clock, so both come from one function.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the system clock is set before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
