//! The two request-head timeouts of an HTTP connection — `header-read-timeout` for a new
//! connection's first request, `idle-timeout` between requests on a keep-alive connection —
//! built on hyper's one header-read timer.
//!
//! hyper 1.x starts its header-read timer whenever a connection begins waiting for a request
//! head: right after the connection is accepted, and again as soon as a response is complete
//! on a keep-alive connection (`State::idle` asks for a read, and `Conn::poll_read_head`
//! arms the timer; see hyper's `proto/h1/conn.rs`). When it fires before the head is
//! complete, hyper closes the connection without an answer. So the one timer already bounds
//! both a slowloris client dribbling its headers and an idle keep-alive connection with no
//! request in flight; it only needs a different length for the two waits. [`HeadTimer`] is a
//! per-connection [`Timer`] that lets hyper's first deadline stand and moves every later one
//! from `header-read-timeout` to `idle-timeout` after its start. Streaming responses (SSE,
//! iframe, long polls) are in flight, not idle: no head is awaited while they run.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hyper::rt::{Sleep, Timer};
use hyper_util::rt::TokioTimer;

/// hyper's header-read timer with the keep-alive wait stretched or shortened to the idle
/// timeout. Configure hyper's `header_read_timeout` with the same `first` duration.
#[derive(Debug)]
pub struct HeadTimer {
    inner: TokioTimer,
    first: Duration,
    idle: Duration,
    waited_before: AtomicBool,
}

impl HeadTimer {
    /// A timer for one connection: `first` for the first request head, `idle` for each one
    /// after it.
    pub fn new(first: Duration, idle: Duration) -> Self {
        Self {
            inner: TokioTimer::new(),
            first,
            idle,
            waited_before: AtomicBool::new(false),
        }
    }

    /// hyper asks for `now + first`; after the first wait, make it `now + idle`.
    fn adjust(&self, deadline: Instant) -> Instant {
        if self.waited_before.swap(true, Ordering::Relaxed) {
            deadline
                .checked_sub(self.first)
                .and_then(|start| start.checked_add(self.idle))
                .unwrap_or(deadline)
        } else {
            deadline
        }
    }
}

impl Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.inner.sleep(duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        self.inner.sleep_until(self.adjust(deadline))
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn Sleep>>, new_deadline: Instant) {
        self.inner.reset(sleep, self.adjust(new_deadline));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_deadline_stands_and_later_ones_use_the_idle_timeout() {
        let timer = HeadTimer::new(Duration::from_secs(10), Duration::from_secs(60));
        let now = Instant::now();
        assert_eq!(
            timer.adjust(now + Duration::from_secs(10)),
            now + Duration::from_secs(10)
        );
        assert_eq!(
            timer.adjust(now + Duration::from_secs(10)),
            now + Duration::from_secs(60)
        );
    }
}
