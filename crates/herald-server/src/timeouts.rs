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
//!
//! Its sleeps are entries on the server's wheel of deadlines (see `deadlines`), like the
//! connection front's head waits, not tokio timers: one coarse timer for every connection.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use herald_core::Signals;
use hyper::rt::{Sleep, Timer};

use crate::deadlines::{deadline_after, Bell};
use crate::registry::{Registration, Registry};

/// hyper's header-read timer with the keep-alive wait stretched or shortened to the idle
/// timeout. Configure hyper's `header_read_timeout` with the same `first` duration.
pub struct HeadTimer {
    registry: Arc<Registry>,
    first: Duration,
    idle: Duration,
    waited_before: AtomicBool,
}

impl HeadTimer {
    /// A timer for one connection: `first` for the first request head, `idle` for each one
    /// after it, on `registry`'s wheel of deadlines.
    pub fn new(first: Duration, idle: Duration, registry: Arc<Registry>) -> Self {
        Self {
            registry,
            first,
            idle,
            waited_before: AtomicBool::new(false),
        }
    }

    fn wheel_sleep(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        let bell = Arc::new(Bell::default());
        let registration = self
            .registry
            .register_until(bell.clone(), tokio::time::Instant::from_std(deadline));
        Box::pin(WheelSleep {
            bell,
            _registration: registration,
        })
    }

    /// hyper asks for `now + first`; after the first wait, make it `now + idle`.
    fn adjust(&self, deadline: Instant) -> Instant {
        if self.waited_before.swap(true, Ordering::Relaxed) {
            deadline.checked_sub(self.first).map_or(deadline, |start| {
                deadline_after(tokio::time::Instant::from_std(start), self.idle).into_std()
            })
        } else {
            deadline
        }
    }
}

impl Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.wheel_sleep(deadline_after(tokio::time::Instant::now(), duration).into_std())
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        self.wheel_sleep(self.adjust(deadline))
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn Sleep>>, new_deadline: Instant) {
        *sleep = self.sleep_until(new_deadline);
    }
}

/// A hyper sleep that is an entry on the wheel of deadlines: done once the wheel rings its
/// deadline. (Shutdown rings it too; hyper's graceful shutdown ends the connection then, so
/// that ring is not a timeout.)
struct WheelSleep {
    bell: Arc<Bell>,
    _registration: Registration,
}

impl Future for WheelSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        while let Poll::Ready(signals) = self.bell.poll_rung(cx) {
            if signals.contains(Signals::DEADLINE) {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }
}

impl Sleep for WheelSleep {}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Arc<Registry> {
        Arc::new(Registry::new(Duration::from_millis(10)))
    }

    #[test]
    fn first_deadline_stands_and_later_ones_use_the_idle_timeout() {
        let timer = HeadTimer::new(Duration::from_secs(10), Duration::from_secs(60), registry());
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

    #[tokio::test]
    async fn a_sleep_ends_when_the_wheel_rings_its_deadline_not_at_shutdown() {
        let registry = registry();
        let ticker = {
            let registry = Arc::clone(&registry);
            tokio::spawn(async move {
                registry.deadlines().run(std::future::pending::<()>()).await;
            })
        };
        let timer = HeadTimer::new(
            Duration::from_millis(50),
            Duration::from_secs(60),
            registry.clone(),
        );
        let started = Instant::now();
        let mut sleep = timer.sleep_until(started + Duration::from_millis(50));
        assert_eq!(registry.len(), 1, "on the wheel");
        // A shutdown ring is not the deadline.
        registry.raise(None, Signals::CLOSE);
        let cx = &mut Context::from_waker(std::task::Waker::noop());
        assert!(sleep.as_mut().poll(cx).is_pending());
        tokio::time::timeout(Duration::from_secs(5), sleep)
            .await
            .expect("rung by the wheel");
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(registry.len(), 0, "off the wheel once dropped");
        ticker.abort();
    }
}
