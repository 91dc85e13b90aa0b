//! The serving thread a piece of code runs on, as a small index: per-thread state (the upstream
//! pool's idle connections) is kept per slot, so a thread reuses the connections its own
//! runtime drives. Threads that are not serving threads are slot 0.

use std::cell::Cell;

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
