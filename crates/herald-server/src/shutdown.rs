//! The server-wide shutdown signal, cheap to ask about.
//!
//! Connections ask "is the server shutting down?" on every request: before answering
//! keep-alive, before waiting for the next request, when a session opens. A
//! `CancellationToken` answers under a mutex that every connection shares (a lock and a
//! contended cache line per question, about 1 % of the server's CPU when publishing), so the
//! answer is also kept in an atomic flag, set before the token is cancelled. The token remains
//! for the few long-lived tasks that wait for shutdown as a future.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Shutdown {
    begun: AtomicBool,
    token: CancellationToken,
}

impl Shutdown {
    /// Begins the shutdown: every later [`Shutdown::is_cancelled`] is true and every
    /// [`Shutdown::cancelled`] future completes.
    pub fn cancel(&self) {
        self.begun.store(true, Ordering::Release);
        self.token.cancel();
    }

    /// True once the shutdown has begun; one atomic load.
    pub fn is_cancelled(&self) -> bool {
        self.begun.load(Ordering::Acquire)
    }

    /// Completes when the shutdown begins.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }

    /// The token itself, for a task that must own it.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_flag_and_the_future_both_see_the_shutdown() {
        let shutdown = Shutdown::default();
        assert!(!shutdown.is_cancelled());
        let token = shutdown.token();
        shutdown.cancel();
        assert!(shutdown.is_cancelled());
        shutdown.cancelled().await;
        assert!(token.is_cancelled());
    }
}
