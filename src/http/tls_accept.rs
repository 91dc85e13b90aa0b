//! The TLS handshake when certificates are obtained on demand (ACME): the ClientHello is read
//! first, so a handshake can wait for its name's certificate, and TLS-ALPN-01 validation
//! handshakes get the challenge certificate. Without ACME the plain acceptor is used.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tokio_rustls::LazyConfigAcceptor;

use crate::tls::{CertResolver, ACME_TLS_ALPN};

/// What an on-demand handshake needs; shared by every TLS listener.
pub struct OnDemand {
    pub certs: Arc<CertResolver>,
    /// The serving config (its resolver is `certs`).
    pub config: Arc<rustls::ServerConfig>,
    /// Answers `acme-tls/1` handshakes only.
    pub challenge: Arc<rustls::ServerConfig>,
    /// How long a handshake waits for its name's certificate (`acme.handshake_wait`).
    pub wait: Duration,
}

/// Reads the ClientHello within `timeout`, waits (at most `wait`) for a certificate the name
/// needs, then finishes the handshake within `timeout` again.
pub async fn accept<IO>(
    on_demand: &OnDemand,
    stream: IO,
    timeout: Duration,
) -> io::Result<TlsStream<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let lazy = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
    let start = within(timeout, lazy).await?;
    let (challenge, order) = {
        let hello = start.client_hello();
        let challenge = hello
            .alpn()
            .is_some_and(|mut offered| offered.any(|p| p == ACME_TLS_ALPN));
        let order = match challenge {
            true => None,
            false => hello
                .server_name()
                .and_then(|sni| on_demand.certs.needs_order(sni)),
        };
        (challenge, order)
    };
    if let Some((acme, name)) = order {
        match tokio::time::timeout(on_demand.wait, acme.obtain(&name)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::debug!(name, error = %e, "no certificate for the handshake"),
            Err(_) => tracing::info!(
                name,
                wait = ?on_demand.wait,
                "the handshake stopped waiting for its certificate (the order goes on)"
            ),
        }
    }
    let config = match challenge {
        true => on_demand.challenge.clone(),
        false => on_demand.config.clone(),
    };
    within(timeout, start.into_stream(config)).await
}

async fn within<T>(
    timeout: Duration,
    step: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    tokio::time::timeout(timeout, step)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
}
