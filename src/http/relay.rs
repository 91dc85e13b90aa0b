//! The byte relay of an upgraded connection (WebSocket): both directions copied until either side
//! closes (half-close propagates), closed with 1001 "going away" at shutdown or after an idle
//! timeout.
//!
//! Built for many idle connections: a relay owns no buffer while nothing moves. Each read lands
//! in a buffer on the polling thread's stack and goes straight to the other side; only bytes the
//! other side cannot take yet are copied to the heap, and that copy is freed as soon as it is
//! written. An idle relay costs its task and the two sockets, not 2 × 8 KiB of copy buffers.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_util::sync::CancellationToken;

/// WebSocket close frame 1001 as a server sends it (unmasked) ...
const CLOSE_1001_TO_CLIENT: [u8; 4] = [0x88, 0x02, 0x03, 0xE9];
/// ... and as a client sends it (masked, with a zero mask).
const CLOSE_1001_TO_SERVER: [u8; 8] = [0x88, 0x82, 0, 0, 0, 0, 0x03, 0xE9];

/// Most bytes one read takes (one TLS record's worth of plaintext). Lives on the stack of the
/// poll, never in the relay.
const READ_CHUNK: usize = 16 * 1024;
/// How long the 1001 close may take before the sockets are simply dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Copies `client` ⇄ `upstream` until both sides are done, `shutdown` fires, or nothing moved
/// either way for `idle_timeout` (`Duration::ZERO`: no idle timeout). `moved` runs on every
/// read that returned bytes, either way.
pub async fn relay<C, U>(
    mut client: C,
    mut upstream: U,
    idle_timeout: Duration,
    shutdown: CancellationToken,
    moved: impl Fn(),
) where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    // Milliseconds since `started` of the last read that returned bytes, either way.
    let last_read = AtomicU64::new(0);
    let reason = {
        let mut to_upstream = Half::default();
        let mut to_client = Half::default();
        let copy = poll_fn(|cx| {
            // Any bytes keep the connection from idling out; only more than pings and pongs
            // are use of the sandbox (a browser answers an app's pings by itself).
            let stamp = |data: &[u8]| {
                let ms = started.elapsed().as_millis() as u64;
                last_read.store(ms, Ordering::Relaxed);
                if !only_heartbeats(data) {
                    moved();
                }
            };
            let up = to_upstream.poll(cx, &mut client, &mut upstream, stamp)?;
            let down = to_client.poll(cx, &mut upstream, &mut client, stamp)?;
            if up.is_ready() && down.is_ready() {
                Poll::Ready(Ok::<(), io::Error>(()))
            } else {
                Poll::Pending
            }
        });
        tokio::select! {
            result = copy => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "relay ended with an error");
                }
                return;
            }
            _ = shutdown.cancelled() => "shutdown",
            _ = idle(&last_read, started, idle_timeout) => "idle timeout",
        }
    };
    tracing::debug!(reason, "closing relay with 1001");
    // Frames may be mid-flight in either direction; the close is best effort and the sockets
    // are shut down right after it.
    // Bounded: a peer that stopped reading must not keep this task (and the connection
    // slots it holds) forever.
    let close = async {
        let _ = client.write_all(&CLOSE_1001_TO_CLIENT).await;
        let _ = upstream.write_all(&CLOSE_1001_TO_SERVER).await;
        let _ = client.shutdown().await;
        let _ = upstream.shutdown().await;
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, close).await;
}

/// Resolves once no read happened on either side for `timeout`; never when it is zero.
async fn idle(last_read: &AtomicU64, started: Instant, timeout: Duration) {
    if timeout.is_zero() {
        return std::future::pending().await;
    }
    loop {
        let last = Duration::from_millis(last_read.load(Ordering::Relaxed));
        let quiet_for = started.elapsed().saturating_sub(last);
        if quiet_for >= timeout {
            return;
        }
        tokio::time::sleep(timeout - quiet_for).await;
    }
}

/// One direction of the relay: reader → writer.
#[derive(Default)]
struct Half {
    /// Bytes read but not yet taken by the writer (`unwritten[written..]`); empty, with no
    /// allocation, whenever the writer keeps up.
    unwritten: Vec<u8>,
    written: usize,
    /// The writer took bytes since its last flush (a TLS writer may hold them back).
    need_flush: bool,
    /// The reader hit EOF: the writer is being shut down (half-close).
    eof: bool,
    done: bool,
}

impl Half {
    /// Moves what is ready; `Ready(Ok)` once the reader hit EOF and the writer is shut down.
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        stamp: impl Fn(&[u8]),
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        // Yield now and then even when both sides always have bytes ready.
        let coop = ready!(tokio::task::coop::poll_proceed(cx));
        let mut writer = Pin::new(writer);
        loop {
            // The writer first takes what it refused before; nothing is read meanwhile.
            while self.written < self.unwritten.len() {
                let n = ready!(writer
                    .as_mut()
                    .poll_write(cx, &self.unwritten[self.written..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                coop.made_progress();
                self.written += n;
                self.need_flush = true;
            }
            if !self.unwritten.is_empty() {
                self.unwritten = Vec::new();
                self.written = 0;
            }
            if self.eof {
                ready!(writer.as_mut().poll_flush(cx))?;
                ready!(writer.as_mut().poll_shutdown(cx))?;
                coop.made_progress();
                self.done = true;
                return Poll::Ready(Ok(()));
            }

            let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut buf = ReadBuf::uninit(&mut chunk);
            match Pin::new(&mut *reader).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) => coop.made_progress(),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    // Nothing more to read: push out what a buffering writer still holds.
                    if self.need_flush {
                        ready!(writer.as_mut().poll_flush(cx))?;
                        self.need_flush = false;
                    }
                    return Poll::Pending;
                }
            }
            let mut data = buf.filled();
            if data.is_empty() {
                self.eof = true;
                continue;
            }
            stamp(data);
            while !data.is_empty() {
                match writer.as_mut().poll_write(cx, data) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    Poll::Ready(Ok(n)) => {
                        data = &data[n..];
                        self.need_flush = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        // The writer's wakeup is registered; keep the rest until it fires.
                        self.unwritten = data.to_vec();
                        return Poll::Pending;
                    }
                }
            }
        }
    }
}

/// Does `data` hold only whole WebSocket pings and pongs (opcodes 0x9, 0xA: at most 125 bytes
/// of payload, masked or not)? A read that starts or ends inside any other frame is traffic.
pub fn only_heartbeats(mut data: &[u8]) -> bool {
    while let [first, second, ..] = *data {
        let heartbeat = first & 0x80 != 0 && matches!(first & 0x0f, 0x9 | 0xA);
        let length = usize::from(second & 0x7f);
        let frame = 2 + if second & 0x80 != 0 { 4 } else { 0 } + length;
        if !heartbeat || length > 125 || data.len() < frame {
            return false;
        }
        data = &data[frame..];
    }
    data.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, DuplexStream};

    type Peers = (DuplexStream, DuplexStream, tokio::task::JoinHandle<()>);

    /// A relay between two duplex pipes of `capacity` bytes; returns the client's and the
    /// upstream's far ends and the relay task.
    fn start(capacity: usize, idle: Duration, shutdown: CancellationToken) -> Peers {
        let (client, client_peer) = tokio::io::duplex(capacity);
        let (upstream, upstream_peer) = tokio::io::duplex(capacity);
        let task = tokio::spawn(relay(client, upstream, idle, shutdown, || {}));
        (client_peer, upstream_peer, task)
    }

    async fn within<T>(what: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(10), what)
            .await
            .expect("timed out")
    }

    #[tokio::test]
    async fn bytes_go_both_ways() {
        let (mut client, mut upstream, task) =
            start(1024, Duration::ZERO, CancellationToken::new());
        for round in 0..3u8 {
            client.write_all(&[b'c', round]).await.unwrap();
            let mut got = [0u8; 2];
            within(upstream.read_exact(&mut got)).await.unwrap();
            assert_eq!(got, [b'c', round]);
            upstream.write_all(&[b'u', round, round]).await.unwrap();
            let mut got = [0u8; 3];
            within(client.read_exact(&mut got)).await.unwrap();
            assert_eq!(got, [b'u', round, round]);
        }
        drop((client, upstream));
        within(task).await.unwrap();
    }

    /// Several MiB each way at once through 64-byte pipes whose far ends read slowly: every
    /// write is partial or refused, so the unwritten remainders carry the data.
    #[tokio::test]
    async fn large_transfer_is_byte_exact_under_backpressure() {
        const LEN: usize = 3 * 1024 * 1024 + 17;
        fn pattern(seed: u8) -> Vec<u8> {
            (0..LEN)
                .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 13) as u8)
                .collect()
        }
        async fn slow_read(mut from: tokio::io::ReadHalf<DuplexStream>) -> Vec<u8> {
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            let mut reads = 0u32;
            loop {
                let n = from.read(&mut buf).await.unwrap();
                if n == 0 {
                    return got;
                }
                got.extend_from_slice(&buf[..n]);
                reads += 1;
                if reads.is_multiple_of(256) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
        let (client, upstream, task) = start(64, Duration::ZERO, CancellationToken::new());
        let (client_rx, mut client_tx) = tokio::io::split(client);
        let (upstream_rx, mut upstream_tx) = tokio::io::split(upstream);
        let up_data = pattern(1);
        let down_data = pattern(2);
        let send_up = {
            let data = up_data.clone();
            tokio::spawn(async move {
                client_tx.write_all(&data).await.unwrap();
                client_tx.shutdown().await.unwrap();
            })
        };
        let send_down = {
            let data = down_data.clone();
            tokio::spawn(async move {
                upstream_tx.write_all(&data).await.unwrap();
                upstream_tx.shutdown().await.unwrap();
            })
        };
        let recv_up = tokio::spawn(slow_read(upstream_rx));
        let recv_down = tokio::spawn(slow_read(client_rx));
        let (at_upstream, at_client) = within(async {
            let up = recv_up.await.unwrap();
            let down = recv_down.await.unwrap();
            (up, down)
        })
        .await;
        assert!(at_upstream == up_data, "client → upstream bytes differ");
        assert!(at_client == down_data, "upstream → client bytes differ");
        within(send_up).await.unwrap();
        within(send_down).await.unwrap();
        within(task).await.unwrap();
    }

    #[tokio::test]
    async fn half_close_propagates_and_the_other_way_keeps_flowing() {
        let (mut client, mut upstream, task) =
            start(1024, Duration::ZERO, CancellationToken::new());
        client.write_all(b"last words").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        within(upstream.read_to_end(&mut got)).await.unwrap();
        assert_eq!(got, b"last words", "upstream sees the bytes, then EOF");
        upstream.write_all(b"still here").await.unwrap();
        let mut got = [0u8; 10];
        within(client.read_exact(&mut got)).await.unwrap();
        assert_eq!(&got, b"still here");
        assert!(!task.is_finished(), "one open direction keeps the relay");
        upstream.shutdown().await.unwrap();
        let mut rest = Vec::new();
        within(client.read_to_end(&mut rest)).await.unwrap();
        assert!(rest.is_empty());
        within(task).await.unwrap();
    }

    #[tokio::test]
    async fn idle_relays_close_with_1001_and_busy_ones_stay() {
        let (mut client_peer, mut upstream_peer, task) =
            start(1024, Duration::from_millis(300), CancellationToken::new());
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            client_peer.write_all(b"x").await.unwrap();
            let mut byte = [0u8; 1];
            upstream_peer.read_exact(&mut byte).await.unwrap();
        }
        assert!(
            !task.is_finished(),
            "traffic keeps it open past the idle timeout"
        );
        let mut close = [0u8; 4];
        within(client_peer.read_exact(&mut close)).await.unwrap();
        assert_eq!(close, CLOSE_1001_TO_CLIENT);
        let mut masked = [0u8; 8];
        upstream_peer.read_exact(&mut masked).await.unwrap();
        assert_eq!(masked, CLOSE_1001_TO_SERVER);
        // ... and then both are shut down.
        let mut rest = Vec::new();
        within(client_peer.read_to_end(&mut rest)).await.unwrap();
        within(upstream_peer.read_to_end(&mut rest)).await.unwrap();
        assert!(rest.is_empty());
        within(task).await.unwrap();
    }

    #[tokio::test]
    async fn shutdown_closes_with_1001_both_ways() {
        let shutdown = CancellationToken::new();
        let (mut client_peer, mut upstream_peer, task) =
            start(1024, Duration::ZERO, shutdown.clone());
        client_peer.write_all(b"hi").await.unwrap();
        let mut got = [0u8; 2];
        within(upstream_peer.read_exact(&mut got)).await.unwrap();
        shutdown.cancel();
        let mut to_client = Vec::new();
        within(client_peer.read_to_end(&mut to_client))
            .await
            .unwrap();
        assert_eq!(to_client, CLOSE_1001_TO_CLIENT);
        let mut to_upstream = Vec::new();
        within(upstream_peer.read_to_end(&mut to_upstream))
            .await
            .unwrap();
        assert_eq!(to_upstream, CLOSE_1001_TO_SERVER);
        within(task).await.unwrap();
    }

    /// An idle relay holds no buffer: its whole state is a few hundred bytes.
    #[test]
    fn an_idle_relay_is_small() {
        let (client, _a) = tokio::io::duplex(16);
        let (upstream, _b) = tokio::io::duplex(16);
        let future = relay(
            client,
            upstream,
            Duration::ZERO,
            CancellationToken::new(),
            || {},
        );
        let size = std::mem::size_of_val(&future);
        assert!(size < 1024, "relay future is {size} bytes");
    }

    #[test]
    fn pings_and_pongs_are_not_traffic() {
        let ping = [0x89, 0x00];
        let masked_pong = [0x8a, 0x82, 1, 2, 3, 4, b'h', b'i'];
        let text = [0x81, 0x02, b'h', b'i'];
        let close = [0x88, 0x00];
        let rows: [(&[u8], bool); 7] = [
            (&ping, true),
            (&masked_pong, true),
            (&[0x89, 0x00, 0x8a, 0x00], true),
            (&text, false),
            (&[0x89, 0x00, 0x81, 0x00], false),
            (&close, false),
            (&[0x89, 0x05, b'a'], false),
        ];
        for (data, heartbeat) in rows {
            assert_eq!(only_heartbeats(data), heartbeat, "{data:?}");
        }
    }
}
