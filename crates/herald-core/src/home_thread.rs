//! Which connection thread the current code runs on, so that a publisher sharing a large
//! fan-out writes the subscribers of its own thread and leaves the others' to their threads.
//!
//! A server that runs its connections on threads of their own (one single-threaded runtime
//! each, as `herald-server` does) numbers them and calls [`set_current`] once at the start of
//! each; an [`crate::Outbox`] remembers the thread it was made on. Code on any other thread
//! (an engine's reader task, a test) is on no connection thread: [`current`] is `None` there,
//! and outboxes made off the connection threads count as that no-thread's own.

use std::cell::Cell;

thread_local! {
    static CURRENT: Cell<Option<u16>> = const { Cell::new(None) };
}

/// Marks the calling thread as connection thread `index`.
pub fn set_current(index: u16) {
    CURRENT.with(|current| current.set(Some(index)));
}

/// The connection thread the caller runs on, if it runs on one.
pub fn current() -> Option<u16> {
    CURRENT.with(Cell::get)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_thread_has_its_own_mark() {
        assert_eq!(current(), None);
        set_current(3);
        assert_eq!(current(), Some(3));
        let other = std::thread::spawn(|| {
            let before = current();
            set_current(5);
            (before, current())
        })
        .join()
        .unwrap();
        assert_eq!(other, (None, Some(5)));
        assert_eq!(current(), Some(3));
    }
}
