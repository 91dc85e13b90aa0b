//! The client's TCP socket as the HTTP server sees it, with the two ways a connection can end
//! besides a plain close:
//! - a lingering close: after an answer sent before the request body was read, the write side
//!   is shut (FIN) and what the client still sends is read and discarded, up to a bound in bytes
//!   and time, so the kernel does not answer that data with a reset that destroys the answer in
//!   the client's buffers (nginx's `lingering_close`);
//! - an abortive close (RST, `SO_LINGER` 0) when a response body was cut short, so no client
//!   (an HTTP/1.0 one reading to the end of the connection, say) takes a truncated body for a
//!   whole one.
//!
//! TLS runs on top of this stream, so both work under TLS too.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

/// What the requests of one connection decided about how it ends; shared by the request handler
/// and the connection's socket.
#[derive(Default)]
pub struct ConnectionEnd {
    linger: AtomicBool,
    reset: AtomicBool,
}

impl ConnectionEnd {
    /// An answer went out before the request body was read: drain before closing.
    pub fn linger(&self) {
        self.linger.store(true, Ordering::Relaxed);
    }

    /// A response body failed midway: close with a reset.
    pub fn reset(&self) {
        self.reset.store(true, Ordering::Relaxed);
    }
}

/// Bounds of a lingering close.
#[derive(Debug, Clone, Copy)]
pub struct LingerLimits {
    pub bytes: u64,
    pub timeout: Duration,
}

pub struct ClientStream {
    tcp: TcpStream,
    end: Arc<ConnectionEnd>,
    limits: LingerLimits,
    lingering: Option<Lingering>,
}

struct Lingering {
    deadline: Pin<Box<Sleep>>,
    left: u64,
    done: bool,
}

impl ClientStream {
    pub fn new(tcp: TcpStream, end: Arc<ConnectionEnd>, limits: LingerLimits) -> ClientStream {
        ClientStream {
            tcp,
            end,
            limits,
            lingering: None,
        }
    }

    /// Reads and discards until the client closes, the bytes are spent or time is up.
    fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(lingering) = self.lingering.as_mut() else {
            return Poll::Ready(());
        };
        let mut buf = [0u8; 16 * 1024];
        while !lingering.done {
            if lingering.deadline.as_mut().poll(cx).is_ready() {
                break;
            }
            let mut read = ReadBuf::new(&mut buf);
            match ready!(Pin::new(&mut self.tcp).poll_read(cx, &mut read)) {
                Ok(()) if !read.filled().is_empty() => {
                    let n = read.filled().len() as u64;
                    lingering.left = lingering.left.saturating_sub(n);
                    lingering.done = lingering.left == 0;
                }
                _ => break, // the client closed (or reset): nothing more to wait for
            }
        }
        lingering.done = true;
        Poll::Ready(())
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.lingering.is_none() {
            ready!(Pin::new(&mut this.tcp).poll_shutdown(cx))?;
            if !this.end.linger.load(Ordering::Relaxed) || this.limits.bytes == 0 {
                return Poll::Ready(Ok(()));
            }
            this.lingering = Some(Lingering {
                deadline: Box::pin(tokio::time::sleep(this.limits.timeout)),
                left: this.limits.bytes,
                done: false,
            });
        }
        this.poll_linger(cx).map(Ok)
    }
}

impl Drop for ClientStream {
    fn drop(&mut self) {
        if self.end.reset.load(Ordering::Relaxed) {
            let _ = socket2::SockRef::from(&self.tcp).set_linger(Some(Duration::ZERO));
        }
    }
}
