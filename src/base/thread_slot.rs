//! The serving thread a piece of code runs on, as a small index: per-thread state (the upstream
//! pool's idle connections) is kept per slot, so a thread reuses the connections its own
//! runtime drives. Threads that are not serving threads are slot 0.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

static COUNT: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    static SLOT: Cell<usize> = const { Cell::new(0) };
}

/// Marks the calling thread as serving thread `slot`.
pub fn set(slot: usize) {
    SLOT.with(|s| s.set(slot));
}

/// The calling thread's slot.
pub fn current() -> usize {
    SLOT.with(Cell::get)
}

/// Records how many serving threads there are (per-slot state is sized by it).
pub fn set_count(count: usize) {
    COUNT.fetch_max(count.max(1), Ordering::Relaxed);
}

/// The number of slots per-slot state should have (at least 1).
pub fn count() -> usize {
    COUNT.load(Ordering::Relaxed)
}
