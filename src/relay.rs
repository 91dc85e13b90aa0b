//! The byte relay of an upgraded connection (WebSocket): both directions copied until either side
//! closes (half-close propagates), closed with 1001 "going away" at shutdown or after an idle
//! timeout.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_util::sync::CancellationToken;

/// WebSocket close frame 1001 as a server sends it (unmasked) ...
const CLOSE_1001_TO_CLIENT: [u8; 4] = [0x88, 0x02, 0x03, 0xE9];
/// ... and as a client sends it (masked, with a zero mask).
const CLOSE_1001_TO_SERVER: [u8; 8] = [0x88, 0x82, 0, 0, 0, 0, 0x03, 0xE9];

/// Copies `client` ⇄ `upstream` until both sides are done, `shutdown` fires, or nothing moved
/// either way for `idle_timeout` (`Duration::ZERO`: no idle timeout).
pub async fn relay<C, U>(
    client: C,
    upstream: U,
    idle_timeout: Duration,
    shutdown: CancellationToken,
) where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    let last_read = Arc::new(AtomicU64::new(0));
    let mut client = Stamped {
        io: client,
        started,
        last_read: last_read.clone(),
    };
    let mut upstream = Stamped {
        io: upstream,
        started,
        last_read: last_read.clone(),
    };
    let reason = tokio::select! {
        result = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "relay ended with an error");
            }
            return;
        }
        _ = shutdown.cancelled() => "shutdown",
        _ = idle(&last_read, started, idle_timeout) => "idle timeout",
    };
    tracing::debug!(reason, "closing relay with 1001");
    // Frames may be mid-flight in either direction; the close is best effort and the sockets
    // are shut down right after it.
    let _ = client.io.write_all(&CLOSE_1001_TO_CLIENT).await;
    let _ = upstream.io.write_all(&CLOSE_1001_TO_SERVER).await;
    let _ = client.io.shutdown().await;
    let _ = upstream.io.shutdown().await;
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

/// Records the time of the last successful read (ms since the relay started).
struct Stamped<T> {
    io: T,
    started: Instant,
    last_read: Arc<AtomicU64>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Stamped<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let ms = self.started.elapsed().as_millis() as u64;
            self.last_read.store(ms, Ordering::Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Stamped<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn idle_relays_close_with_1001_and_busy_ones_stay() {
        let (client, mut client_peer) = tokio::io::duplex(1024);
        let (upstream, mut upstream_peer) = tokio::io::duplex(1024);
        let task = tokio::spawn(relay(
            client,
            upstream,
            Duration::from_millis(300),
            CancellationToken::new(),
        ));
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
        tokio::time::timeout(Duration::from_secs(2), client_peer.read_exact(&mut close))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(close, CLOSE_1001_TO_CLIENT);
        let mut masked = [0u8; 8];
        upstream_peer.read_exact(&mut masked).await.unwrap();
        assert_eq!(masked, CLOSE_1001_TO_SERVER);
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .unwrap()
            .unwrap();
    }
}
