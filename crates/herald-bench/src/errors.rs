//! Error counts by kind, shared by every task of a run.
//!
//! Failures in a load test are data, not reasons to stop: each task records what went wrong
//! under a short kind ("connect: Connection refused", "publish: status 503") and carries on.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

/// Counts of errors by kind.
#[derive(Debug, Default)]
pub struct ErrorCounts {
    by_kind: Mutex<BTreeMap<String, u64>>,
    total: AtomicU64,
}

impl ErrorCounts {
    /// Counts one error of `kind`.
    pub fn add(&self, kind: impl Into<String>) {
        self.add_many(kind, 1);
    }

    /// Counts `n` errors of `kind`.
    pub fn add_many(&self, kind: impl Into<String>, n: u64) {
        if n == 0 {
            return;
        }
        self.total.fetch_add(n, Ordering::Relaxed);
        *self
            .by_kind
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(kind.into())
            .or_default() += n;
    }

    /// All errors so far.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// A copy of the counts.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.by_kind
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// A short kind for an I/O error: its message without the OS error number.
pub fn io_kind(context: &str, error: &std::io::Error) -> String {
    let text = error.to_string();
    let text = text.split(" (os error").next().unwrap_or(&text);
    format!("{context}: {text}")
}

/// A short kind for any error: [`io_kind`] for I/O errors, else `context: message`.
pub fn kind_of(context: &str, error: &anyhow::Error) -> String {
    match error.downcast_ref::<std::io::Error>() {
        Some(io) => io_kind(context, io),
        None => format!("{context}: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_kind() {
        let e = ErrorCounts::default();
        e.add("a");
        e.add("b");
        e.add("a");
        assert_eq!(e.total(), 3);
        assert_eq!(
            e.snapshot(),
            BTreeMap::from([("a".into(), 2), ("b".into(), 1)])
        );
    }

    #[test]
    fn io_kind_drops_the_errno() {
        let error = std::io::Error::from_raw_os_error(111);
        assert_eq!(io_kind("connect", &error), "connect: Connection refused");
        let wrapped = anyhow::Error::from(std::io::Error::from_raw_os_error(104));
        assert_eq!(kind_of("read", &wrapped), "read: Connection reset by peer");
        assert_eq!(kind_of("read", &anyhow::anyhow!("bad")), "read: bad");
    }
}
