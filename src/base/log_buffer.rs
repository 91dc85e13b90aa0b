//! A line log that costs the request path a lock it never shares and a `memcpy`: lines are
//! appended to one buffer per worker thread, and a background thread swaps the full buffers out
//! and writes them in large vectored writes (stdout, stderr or an appended file, reopened on
//! request for logrotate). No system call on the request path but a wake-up per half buffer.
//!
//! When the writer falls behind (a full disk, a stuck pipe) the buffers fill: [`LogBuffer::append`]
//! then says [`Full`], and the caller either waits for room ([`LogBuffer::append_waiting`], no
//! line lost) or drops the line and counts it. A failed write is retried, never skipped.

use std::cell::Cell;
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::thread::Thread;
use std::time::Duration;

use tokio::sync::Notify;

/// Where the lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Stdout,
    Stderr,
    /// Opened for appending (created if missing) and reopened by [`LogBuffer::reopen`].
    File(PathBuf),
}

/// The buffer of the calling thread is full: the writer is behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// How long the writer waits before retrying a failed write.
const RETRY_AFTER: Duration = Duration::from_millis(500);

pub struct LogBuffer {
    shared: Arc<Shared>,
}

struct Shared {
    shards: Box<[Shard]>,
    /// A shard holding this many bytes takes no more lines until the writer swaps it out.
    capacity: usize,
    /// Signalled after every swap: waiting appenders try again.
    room: Notify,
    writer: OnceLock<Thread>,
    reopen: AtomicBool,
    closing: AtomicBool,
    /// The writer has stopped (everything written, or given up on a failing output).
    stopped: AtomicBool,
    stopped_signal: Notify,
}

/// One worker thread's buffer, on its own cache line so threads do not share one.
#[repr(align(128))]
struct Shard(Mutex<Vec<u8>>);

impl LogBuffer {
    /// Opens `output` and starts the writer thread. Each of `shards` buffers (about one per
    /// worker thread) holds up to `capacity` bytes; the writer wakes when one is half full and
    /// at least every `flush_interval`.
    pub fn start(
        output: Output,
        shards: usize,
        capacity: usize,
        flush_interval: Duration,
    ) -> io::Result<LogBuffer> {
        let sink = Sink::open(output)?;
        let shared = Arc::new(Shared {
            shards: (0..shards.max(1))
                .map(|_| Shard(Mutex::new(Vec::with_capacity(capacity))))
                .collect(),
            capacity: capacity.max(1),
            room: Notify::new(),
            writer: OnceLock::new(),
            reopen: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            stopped_signal: Notify::new(),
        });
        let weak = Arc::downgrade(&shared);
        let handle = std::thread::Builder::new()
            .name("sandgate-log".into())
            .spawn(move || write_loop(weak, sink, flush_interval))?;
        let _ = shared.writer.set(handle.thread().clone());
        Ok(LogBuffer { shared })
    }

    /// Appends what `line` writes into the calling thread's buffer, unless that buffer is full.
    /// `line` runs under the buffer's lock (which only this thread normally takes): keep it to
    /// formatting.
    pub fn append(&self, line: impl FnOnce(&mut Vec<u8>)) -> Result<(), Full> {
        let shared = &*self.shared;
        let mut buffer = lock(&shared.shards[shard_index(shared.shards.len())].0);
        let before = buffer.len();
        if before >= shared.capacity {
            drop(buffer);
            shared.wake_writer();
            return Err(Full);
        }
        line(&mut buffer);
        let half = shared.capacity / 2;
        let crossed_half = before < half && buffer.len() >= half;
        drop(buffer);
        if crossed_half {
            shared.wake_writer();
        }
        Ok(())
    }

    /// Appends `line`, waiting as long as it takes for room.
    pub async fn append_waiting(&self, line: &[u8]) {
        loop {
            let room = self.shared.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if self.append(|b| b.extend_from_slice(line)).is_ok() {
                return;
            }
            room.await;
        }
    }

    /// Has the writer reopen a file output (after logrotate moved it) before its next write.
    pub fn reopen(&self) {
        self.shared.reopen.store(true, Ordering::Release);
        self.shared.wake_writer();
    }

    /// Writes everything appended so far and stops the writer; `false` when that did not happen
    /// within `within` (an output that blocks, a pipe nobody reads: the writer thread is then
    /// left behind, and what it holds is lost when the process exits).
    pub async fn close(&self, within: Duration) -> bool {
        let shared = &*self.shared;
        shared.closing.store(true, Ordering::Release);
        shared.wake_writer();
        let stopped = async {
            loop {
                let signal = shared.stopped_signal.notified();
                tokio::pin!(signal);
                signal.as_mut().enable();
                if shared.stopped.load(Ordering::Acquire) {
                    return;
                }
                signal.await;
            }
        };
        tokio::time::timeout(within, stopped).await.is_ok()
    }
}

impl Shared {
    fn wake_writer(&self) {
        if let Some(writer) = self.writer.get() {
            writer.unpark();
        }
    }

    /// Swaps every non-empty shard for an empty buffer from `spares`, into `pending`.
    fn take_full(&self, pending: &mut Vec<Vec<u8>>, spares: &mut Vec<Vec<u8>>) {
        for shard in &*self.shards {
            let mut buffer = lock(&shard.0);
            if !buffer.is_empty() {
                let empty = spares
                    .pop()
                    .unwrap_or_else(|| Vec::with_capacity(self.capacity));
                pending.push(std::mem::replace(&mut *buffer, empty));
            }
        }
        self.room.notify_waiters();
    }

    fn is_empty(&self) -> bool {
        self.shards.iter().all(|shard| lock(&shard.0).is_empty())
    }

    fn is_half_full(&self) -> bool {
        let half = self.capacity / 2;
        self.shards.iter().any(|shard| lock(&shard.0).len() >= half)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The calling thread's shard: threads are numbered in the order they first log.
fn shard_index(shards: usize) -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: Cell<usize> = Cell::new(NEXT.fetch_add(1, Ordering::Relaxed));
    }
    INDEX.with(Cell::get) % shards
}

fn write_loop(shared: Weak<Shared>, sink: Sink, flush_interval: Duration) {
    write_until_closed(&shared, sink, flush_interval);
    if let Some(shared) = shared.upgrade() {
        shared.stopped.store(true, Ordering::Release);
        shared.stopped_signal.notify_waiters();
    }
}

fn write_until_closed(shared: &Weak<Shared>, sink: Sink, flush_interval: Duration) {
    let mut writer = Writer {
        sink,
        pending: Vec::new(),
        spares: Vec::new(),
        written: 0,
        failing: false,
    };
    loop {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        // What was appended before the reopen request goes to the file logrotate moved.
        let reopen = shared.reopen.swap(false, Ordering::AcqRel);
        if let Err(error) = writer.write_round(&shared) {
            // Closing, a failing output is given up on; otherwise the lines stay pending.
            if shared.closing.load(Ordering::Acquire) && error.kind() != io::ErrorKind::Interrupted
            {
                return;
            }
            if reopen {
                shared.reopen.store(true, Ordering::Release);
            }
            drop(shared);
            std::thread::sleep(RETRY_AFTER);
            continue;
        }
        if reopen {
            if let Err(error) = writer.sink.reopen() {
                tracing::warn!(%error, "cannot reopen the access log; still writing to the old file");
            }
        }
        if shared.closing.load(Ordering::Acquire) && shared.is_empty() {
            return;
        }
        let half_full = shared.is_half_full();
        drop(shared);
        if !half_full {
            std::thread::park_timeout(flush_interval);
        }
    }
}

/// The writer thread's state: the output and the buffers taken from the shards.
struct Writer {
    sink: Sink,
    /// Full buffers being written, in order.
    pending: Vec<Vec<u8>>,
    /// Empty buffers to swap into the shards.
    spares: Vec<Vec<u8>>,
    /// Bytes of `pending` already written (a failed write may have written part of it).
    written: usize,
    /// The last write failed (reported once per failure streak).
    failing: bool,
}

impl Writer {
    /// Writes what is pending, taking the shards' buffers first when nothing is. A failed write
    /// keeps the lines pending for the next round.
    fn write_round(&mut self, shared: &Shared) -> io::Result<()> {
        if self.pending.is_empty() {
            shared.take_full(&mut self.pending, &mut self.spares);
        }
        if self.pending.is_empty() {
            return Ok(());
        }
        if let Err(error) = self.sink.write_all(&self.pending, &mut self.written) {
            if !self.failing {
                tracing::warn!(%error, "cannot write the access log; retrying, lines are kept");
                self.failing = true;
            }
            return Err(error);
        }
        self.written = 0;
        self.failing = false;
        for mut buffer in self.pending.drain(..) {
            buffer.clear();
            self.spares.push(buffer);
        }
        Ok(())
    }
}

/// The open output.
enum Sink {
    Stdout,
    Stderr,
    File { path: PathBuf, file: File },
}

impl Sink {
    fn open(output: Output) -> io::Result<Sink> {
        Ok(match output {
            Output::Stdout => Sink::Stdout,
            Output::Stderr => Sink::Stderr,
            Output::File(path) => Sink::File {
                file: open_append(&path)?,
                path,
            },
        })
    }

    fn reopen(&mut self) -> io::Result<()> {
        if let Sink::File { path, file } = self {
            *file = open_append(path)?;
        }
        Ok(())
    }

    /// Writes all of `buffers` after the first `written` bytes, counting progress in `written`.
    fn write_all(&mut self, buffers: &[Vec<u8>], written: &mut usize) -> io::Result<()> {
        match self {
            Sink::Stdout => write_vectored_all(&mut io::stdout().lock(), buffers, written),
            Sink::Stderr => write_vectored_all(&mut io::stderr().lock(), buffers, written),
            Sink::File { file, .. } => write_vectored_all(file, buffers, written),
        }
    }
}

fn open_append(path: &PathBuf) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

fn write_vectored_all(
    out: &mut impl Write,
    buffers: &[Vec<u8>],
    written: &mut usize,
) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(buffers.len());
    let mut skip = *written;
    for buffer in buffers {
        if skip >= buffer.len() {
            skip -= buffer.len();
            continue;
        }
        slices.push(IoSlice::new(&buffer[skip..]));
        skip = 0;
    }
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        match out.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                *written += n;
                IoSlice::advance_slices(&mut slices, n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_log(dir: &tempfile::TempDir, capacity: usize) -> (LogBuffer, PathBuf) {
        let path = dir.path().join("access.log");
        let log = LogBuffer::start(
            Output::File(path.clone()),
            2,
            capacity,
            Duration::from_millis(20),
        )
        .unwrap();
        (log, path)
    }

    fn close(log: &LogBuffer) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        assert!(runtime.block_on(log.close(Duration::from_secs(10))));
    }

    #[test]
    fn every_line_reaches_the_file_in_order_per_thread() {
        let dir = tempfile::tempdir().unwrap();
        let (log, path) = file_log(&dir, 1024);
        let log = Arc::new(log);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in 0..5_000 {
                        let line = format!("t{t} {i}\n");
                        while log
                            .append(|b| b.extend_from_slice(line.as_bytes()))
                            .is_err()
                        {
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        close(&log);
        let text = std::fs::read_to_string(&path).unwrap();
        for t in 0..4 {
            let numbers: Vec<usize> = text
                .lines()
                .filter_map(|l| l.strip_prefix(&format!("t{t} ")))
                .map(|n| n.parse().unwrap())
                .collect();
            assert_eq!(numbers, (0..5_000).collect::<Vec<_>>(), "thread {t}");
        }
    }

    #[test]
    fn a_full_buffer_refuses_until_the_writer_swaps_it() {
        let dir = tempfile::tempdir().unwrap();
        // The writer only runs every 20 ms; 100 appends of 64 bytes overflow 1 KiB long before.
        let (log, path) = file_log(&dir, 1024);
        let mut refused = 0;
        for _ in 0..100 {
            if log.append(|b| b.extend_from_slice(&[b'x'; 63])).is_err() {
                refused += 1;
            }
        }
        assert!(refused > 0, "a 1 KiB buffer took 6.3 KiB");
        close(&log);
        let written = std::fs::read(&path).unwrap().len();
        assert_eq!(written, (100 - refused) * 63);
    }

    #[test]
    fn reopen_follows_a_rotated_file() {
        let dir = tempfile::tempdir().unwrap();
        let (log, path) = file_log(&dir, 4096);
        log.append(|b| b.extend_from_slice(b"before\n")).unwrap();
        wait_for(|| std::fs::read_to_string(&path).unwrap_or_default() == "before\n");
        let rotated = dir.path().join("access.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        log.reopen();
        wait_for(|| path.exists());
        log.append(|b| b.extend_from_slice(b"after\n")).unwrap();
        close(&log);
        assert_eq!(std::fs::read_to_string(&rotated).unwrap(), "before\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "after\n");
    }

    #[tokio::test]
    async fn a_waiting_append_lands_once_there_is_room() {
        let dir = tempfile::tempdir().unwrap();
        let (log, path) = file_log(&dir, 64);
        let log = Arc::new(log);
        let lines: Vec<String> = (0..200).map(|i| format!("{i:>40}\n")).collect();
        for line in &lines {
            log.append_waiting(line.as_bytes()).await;
        }
        assert!(log.close(Duration::from_secs(10)).await);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), lines.concat());
    }

    /// An output that never takes a byte (a pipe nobody reads) cannot hold the shutdown.
    #[tokio::test]
    async fn close_gives_up_on_a_stuck_output() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("stuck");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        let _reader = tokio::net::unix::pipe::OpenOptions::new()
            .open_receiver(&fifo)
            .unwrap();
        let log =
            LogBuffer::start(Output::File(fifo), 1, 1 << 20, Duration::from_millis(10)).unwrap();
        // More than the pipe holds (64 KiB): the writer blocks in write(2).
        for _ in 0..4 {
            log.append(|b| b.extend_from_slice(&[b'x'; 100_000]))
                .unwrap();
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        let started = std::time::Instant::now();
        assert!(!log.close(Duration::from_millis(300)).await);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    fn wait_for(mut done: impl FnMut() -> bool) {
        for _ in 0..500 {
            if done() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("timed out");
    }
}
