//! Listeners → connections: the hyper server (HTTP/1.1 and h2c prior knowledge), connection
//! limits, header limits and timeouts, and graceful drain.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ServerConfig;
use crate::proxy::{handle, App, Peer};

/// Serves `listener` until `shutdown` fires, then drains: stops accepting, lets in-flight requests,
/// streams and WebSockets finish for up to `shutdown_timeout`, then closes WebSockets with 1001.
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    config: &ServerConfig,
    shutdown: CancellationToken,
    relays: TaskTracker,
    close_relays: CancellationToken,
) {
    let builder = connection_builder(config);
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(config.max_connections));
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = shutdown.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let client = Arc::new(Peer::new(peer));
        let service = service_fn(move |req| {
            let app = app.clone();
            let client = client.clone();
            async move { Ok::<_, Infallible>(handle(app, req, &client).await) }
        });
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        let connection = graceful.watch(connection.into_owned());
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    drain(graceful, config.shutdown_timeout, relays, close_relays).await;
}

async fn drain(
    graceful: GracefulShutdown,
    timeout: Duration,
    relays: TaskTracker,
    close_relays: CancellationToken,
) {
    tracing::info!(?timeout, "draining connections");
    relays.close();
    let everything_done = async {
        graceful.shutdown().await;
        relays.wait().await;
    };
    if tokio::time::timeout(timeout, everything_done)
        .await
        .is_err()
    {
        tracing::info!("shutdown timeout reached; closing what is still open");
    }
    close_relays.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), relays.wait()).await;
}

fn connection_builder(config: &ServerConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(config.max_header_bytes)
        .max_headers(config.max_headers)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(config.max_header_bytes as u32)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

/// Binds the public listener with `SO_REUSEADDR` and a deep backlog.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}
