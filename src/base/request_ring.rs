//! A ring of the last requests of one sandbox: fixed-size entries (inline byte arrays, no heap
//! per entry), written under a short non-async lock, each with a sequence number, and a notify
//! for the followers of the live stream. The table of rings (which sandboxes, how many) is
//! `http::request_log`'s; this is only the storage.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::futures::Notified;
use tokio::sync::Notify;

/// Bytes of a path kept; a longer one is cut (at a character boundary) and marked.
pub const PATH_BYTES: usize = 256;
/// Bytes of a method kept (extension methods can be longer; they are cut and marked).
pub const METHOD_BYTES: usize = 16;
/// Bytes of a request id kept: all of one (the proxy accepts at most 128).
pub const REQUEST_ID_BYTES: usize = 128;

/// Text of at most `N` bytes, stored inline; cut at a character boundary when longer.
#[derive(Clone, Copy)]
pub struct Inline<const N: usize> {
    len: u16,
    truncated: bool,
    bytes: [u8; N],
}

impl<const N: usize> Inline<N> {
    pub const EMPTY: Self = Inline {
        len: 0,
        truncated: false,
        bytes: [0; N],
    };

    pub fn new(text: &str) -> Self {
        let mut inline = Self::EMPTY;
        inline.set(text);
        inline
    }

    /// Overwrites the text, copying only its bytes (what lies beyond is never read).
    pub fn set(&mut self, text: &str) {
        let mut len = text.len().min(N);
        while !text.is_char_boundary(len) {
            len -= 1;
        }
        self.bytes[..len].copy_from_slice(&text.as_bytes()[..len]);
        self.len = len as u16;
        self.truncated = len < text.len();
    }

    /// Overwrites the text with bytes the caller knows to be ASCII (a request id): no check on
    /// the hot path; anything else reads back as empty.
    pub fn set_ascii(&mut self, bytes: &[u8]) {
        let len = bytes.len().min(N);
        self.bytes[..len].copy_from_slice(&bytes[..len]);
        self.len = len as u16;
        self.truncated = len < bytes.len();
    }

    /// The text (empty if it was set to bytes that are not UTF-8).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or("")
    }

    /// The text was longer than `N` bytes.
    pub fn truncated(&self) -> bool {
        self.truncated
    }
}

/// One request as the ring keeps it. Nothing here is a credential: no host, query, header or
/// cookie has a field.
#[derive(Clone, Copy)]
pub struct Entry {
    /// Set by the ring: 1 for the sandbox's first entry in this ring, then +1 each.
    pub seq: u64,
    /// When the response started (microseconds since the Unix epoch).
    pub unix_micros: u64,
    pub micros: u64,
    /// The response body's length when known up front.
    pub bytes: Option<u64>,
    pub status: u16,
    /// The preview port (`None`: toolbox).
    pub port: Option<u16>,
    /// The route kind's name (`preview`, `toolbox`).
    pub kind: &'static str,
    pub method: Inline<METHOD_BYTES>,
    pub path: Inline<PATH_BYTES>,
    /// Empty when request ids are off.
    pub request_id: Inline<REQUEST_ID_BYTES>,
}

impl Entry {
    pub const EMPTY: Entry = Entry {
        seq: 0,
        unix_micros: 0,
        micros: 0,
        bytes: None,
        status: 0,
        port: None,
        kind: "",
        method: Inline::EMPTY,
        path: Inline::EMPTY,
        request_id: Inline::EMPTY,
    };
}

/// What one read of a ring found.
pub struct Batch {
    /// Oldest first.
    pub entries: Vec<Entry>,
    /// Entries after the reader's position that the ring no longer holds.
    pub dropped: u64,
    /// The sequence number the next entry will have.
    pub next_seq: u64,
}

struct Slots {
    entries: Vec<Entry>,
    next_seq: u64,
}

pub struct Ring {
    capacity: usize,
    slots: Mutex<Slots>,
    /// When the last entry was pushed (for the table's least-recently-used eviction), kept
    /// outside the lock so the table scans it cheaply.
    last_used: AtomicU64,
    /// Live-stream readers; pushes wake them only when there are any.
    followers: AtomicUsize,
    notify: Notify,
    /// Taken out of its table: its memory is freed and nothing writes to it any more.
    evicted: AtomicBool,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl Ring {
    /// A ring of `capacity` entries; the memory is allocated at the first push.
    pub fn new(capacity: usize, now_micros: u64) -> Ring {
        Ring {
            capacity: capacity.max(1),
            slots: Mutex::new(Slots {
                entries: Vec::new(),
                next_seq: 1,
            }),
            last_used: AtomicU64::new(now_micros),
            followers: AtomicUsize::new(0),
            notify: Notify::new(),
            evicted: AtomicBool::new(false),
        }
    }

    fn slots(&self) -> MutexGuard<'_, Slots> {
        // A panic while holding this lock leaves whole entries behind: keep using them.
        self.slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes the next entry in place (over the oldest one when full): its sequence number and
    /// time here, the rest by `fill`, which must set every other field. Wakes followers.
    pub fn push(&self, unix_micros: u64, fill: impl FnOnce(&mut Entry)) {
        {
            let mut slots = self.slots();
            if self.is_evicted() {
                return;
            }
            let seq = slots.next_seq;
            slots.next_seq += 1;
            self.last_used.store(unix_micros, Ordering::Relaxed);
            let slot = if slots.entries.len() < self.capacity {
                if slots.entries.capacity() == 0 {
                    slots.entries.reserve_exact(self.capacity);
                }
                slots.entries.push(Entry::EMPTY);
                slots.entries.last_mut()
            } else {
                slots.entries.get_mut((seq - 1) as usize % self.capacity)
            };
            if let Some(slot) = slot {
                slot.seq = seq;
                slot.unix_micros = unix_micros;
                fill(slot);
            }
        }
        if self.followers.load(Ordering::Acquire) > 0 {
            self.notify.notify_waiters();
        }
    }

    /// Up to `limit` entries from sequence number `from` on (the newest ones when there are
    /// more), oldest first.
    pub fn since(&self, from: u64, limit: usize) -> Batch {
        let slots = self.slots();
        let held = slots.entries.len() as u64;
        let oldest = slots.next_seq - held;
        let start = from
            .max(oldest)
            .max(slots.next_seq.saturating_sub(limit as u64));
        let dropped = oldest.saturating_sub(from);
        let entries = (start..slots.next_seq)
            .map(|seq| slots.entries[(seq - 1) as usize % self.capacity])
            .collect();
        Batch {
            entries,
            dropped,
            next_seq: slots.next_seq,
        }
    }

    /// When the last entry was pushed (or the ring made).
    pub fn last_used(&self) -> u64 {
        self.last_used.load(Ordering::Relaxed)
    }

    /// Frees the entries and marks the ring: whoever still holds it goes back to the table.
    pub fn evict(&self) {
        self.evicted.store(true, Ordering::Release);
        self.slots().entries = Vec::new();
        self.notify.notify_waiters();
    }

    pub fn is_evicted(&self) -> bool {
        self.evicted.load(Ordering::Acquire)
    }

    /// Counts a follower until the guard is dropped.
    pub fn follow(self: &Arc<Ring>) -> FollowGuard {
        self.followers.fetch_add(1, Ordering::AcqRel);
        FollowGuard(self.clone())
    }

    /// Resolves at the next push (or eviction) after it was enabled (`Notified::enable`).
    pub fn notified(&self) -> Notified<'_> {
        self.notify.notified()
    }

    /// Bytes one ring of `capacity` entries holds at most.
    pub const fn bytes_for(capacity: usize) -> usize {
        capacity * std::mem::size_of::<Entry>() + std::mem::size_of::<Ring>()
    }
}

/// A follower of a ring; the ring stops waking anyone when the last one is gone.
pub struct FollowGuard(Arc<Ring>);

impl FollowGuard {
    pub fn ring(&self) -> &Arc<Ring> {
        &self.0
    }
}

impl Drop for FollowGuard {
    fn drop(&mut self) {
        self.0.followers.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(ring: &Ring, path: &str) {
        ring.push(1, |e| {
            e.status = 200;
            e.path.set(path);
        });
    }

    fn paths(batch: &Batch) -> Vec<String> {
        batch
            .entries
            .iter()
            .map(|e| e.path.as_str().to_string())
            .collect()
    }

    #[test]
    fn a_full_ring_keeps_the_newest_in_order_and_counts_what_a_reader_missed() {
        let ring = Ring::new(3, 0);
        for i in 1..=5 {
            push(&ring, &format!("/{i}"));
        }
        let all = ring.since(1, usize::MAX);
        assert_eq!(paths(&all), ["/3", "/4", "/5"]);
        assert_eq!(
            all.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [3, 4, 5]
        );
        assert_eq!((all.dropped, all.next_seq), (2, 6));
        let newest = ring.since(1, 2);
        assert_eq!(paths(&newest), ["/4", "/5"]);
        let after = ring.since(5, 10);
        assert_eq!((paths(&after), after.dropped), (vec!["/5".to_string()], 0));
        assert!(ring.since(6, 10).entries.is_empty());
    }

    #[test]
    fn long_text_is_cut_at_a_character_boundary_and_marked() {
        let long = format!("/{}é", "a".repeat(PATH_BYTES - 2));
        let cut = Inline::<PATH_BYTES>::new(&long);
        assert!(cut.truncated());
        assert_eq!(cut.as_str(), &long[..PATH_BYTES - 1]);
        let exact = Inline::<4>::new("abcd");
        assert_eq!((exact.as_str(), exact.truncated()), ("abcd", false));
    }

    /// The figure the docs give for the memory bound (entries x 480 bytes).
    #[test]
    fn an_entry_takes_at_most_480_bytes() {
        assert!(
            std::mem::size_of::<Entry>() <= 480,
            "{}",
            std::mem::size_of::<Entry>()
        );
    }

    #[test]
    fn an_evicted_ring_frees_its_entries() {
        let ring = Ring::new(4, 0);
        push(&ring, "/a");
        ring.evict();
        assert!(ring.is_evicted());
        assert!(ring.since(1, 10).entries.is_empty());
    }
}
