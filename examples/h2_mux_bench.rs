//! HTTP/2 load client for `loadtest/bench_header_routing.sh`: the same workload in the two
//! shapes an SDK can take toward many sandboxes.
//!
//! - `per-host`: one HTTP/2 connection per sandbox, to `<port>-<id>.<domain>`, opened on the
//!   sandbox's first request (an SDK with a per-host connection pool).
//! - `header`: `--connections` HTTP/2 connections (default 1) to the proxy's own host, every
//!   request naming its sandbox in `X-Daytona-Sandbox-Id` / `X-Daytona-Sandbox-Port`.
//!
//! `--requests` requests, `--concurrency` in flight; request `i` goes to sandbox `i % sandboxes`
//! (`sbx-0000`, `sbx-0001`, ...), so the first `sandboxes` requests each meet a sandbox for the
//! first time (in `per-host` mode: a new connection). Each request carries the preview token.
//! Latency is measured per request from the moment it is due, including a connection opened
//! for it. Prints one `RESULT k=v ...` line; exits 1 if any request failed.
//!
//!   cargo run --release --example h2_mux_bench -- --addr 127.0.0.1:8080 --mode header \
//!     --sandboxes 500 --app-port 3000 --token bench-token --requests 20000 --concurrency 64
//!
//! With `--tls-ca ca.pem` it speaks TLS (ALPN h2) with SNI = the host it addresses.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::OnceCell;

type Sender = SendRequest<Empty<Bytes>>;
type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    PerHost,
    Header,
}

struct Args {
    addr: SocketAddr,
    mode: Mode,
    sandboxes: usize,
    app_port: u16,
    token: String,
    domain: String,
    /// The proxy's own host (header mode).
    own_host: String,
    requests: usize,
    concurrency: usize,
    connections: usize,
    path: String,
    tls: Option<Arc<rustls::ClientConfig>>,
}

fn parse_args() -> Result<Args, Error> {
    let mut args = Args {
        addr: "127.0.0.1:8080".parse()?,
        mode: Mode::Header,
        sandboxes: 500,
        app_port: 3000,
        token: String::new(),
        domain: "preview.localhost".into(),
        own_host: String::new(),
        requests: 10_000,
        concurrency: 64,
        connections: 1,
        path: "/".into(),
        tls: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--addr" => args.addr = value()?.parse()?,
            "--mode" => {
                args.mode = match value()?.as_str() {
                    "per-host" => Mode::PerHost,
                    "header" => Mode::Header,
                    other => return Err(format!("unknown mode {other}").into()),
                }
            }
            "--sandboxes" => args.sandboxes = value()?.parse()?,
            "--app-port" => args.app_port = value()?.parse()?,
            "--token" => args.token = value()?,
            "--domain" => args.domain = value()?,
            "--own-host" => args.own_host = value()?,
            "--requests" => args.requests = value()?.parse()?,
            "--concurrency" => args.concurrency = value()?.parse()?,
            "--connections" => args.connections = value()?.parse()?,
            "--path" => args.path = value()?,
            "--tls-ca" => args.tls = Some(tls_config(&value()?)?),
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    if args.own_host.is_empty() {
        args.own_host = args.domain.clone();
    }
    if args.sandboxes == 0 || args.concurrency == 0 || args.connections == 0 {
        return Err("--sandboxes, --concurrency and --connections must be positive".into());
    }
    Ok(args)
}

fn tls_config(ca: &str) -> Result<Arc<rustls::ClientConfig>, Error> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

fn sandbox_id(i: usize) -> String {
    format!("sbx-{i:04}")
}

/// Opens one HTTP/2 connection (TCP, TLS when configured, the h2 handshake).
async fn connect(args: &Args, host: &str) -> Result<Sender, Error> {
    let tcp = tokio::net::TcpStream::connect(args.addr).await?;
    tcp.set_nodelay(true)?;
    let builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    let sender = match &args.tls {
        Some(config) => {
            let name = rustls::pki_types::ServerName::try_from(host.to_string())?;
            let tls = tokio_rustls::TlsConnector::from(config.clone())
                .connect(name, tcp)
                .await?;
            let (sender, connection) = builder.handshake(TokioIo::new(tls)).await?;
            tokio::spawn(connection);
            sender
        }
        None => {
            let (sender, connection) = builder.handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(connection);
            sender
        }
    };
    Ok(sender)
}

struct Run {
    args: Args,
    /// Per-host mode: one per sandbox; header mode: `--connections`.
    pool: Vec<OnceCell<Sender>>,
    next: AtomicUsize,
    opened: AtomicUsize,
    errors: AtomicU64,
}

impl Run {
    /// The connection request `i` goes over, and the host it addresses.
    async fn sender(&self, i: usize) -> Result<(Sender, String), Error> {
        let sandbox = i % self.args.sandboxes;
        let (slot, host) = match self.args.mode {
            Mode::PerHost => (
                sandbox,
                format!(
                    "{}-{}.{}",
                    self.args.app_port,
                    sandbox_id(sandbox),
                    self.args.domain
                ),
            ),
            Mode::Header => (i % self.args.connections, self.args.own_host.clone()),
        };
        let sender = self.pool[slot]
            .get_or_try_init(|| async {
                self.opened.fetch_add(1, Ordering::Relaxed);
                connect(&self.args, &host).await
            })
            .await?;
        Ok((sender.clone(), host))
    }

    async fn one(&self, i: usize) -> Result<(), Error> {
        let (mut sender, host) = self.sender(i).await?;
        let sandbox = i % self.args.sandboxes;
        let mut request = http::Request::builder()
            .uri(format!("https://{host}{}", self.args.path))
            .header("x-daytona-preview-token", &self.args.token);
        if self.args.mode == Mode::Header {
            request = request
                .header("x-daytona-sandbox-id", sandbox_id(sandbox))
                .header("x-daytona-sandbox-port", self.args.app_port);
        }
        sender.ready().await?;
        let response = sender.send_request(request.body(Empty::new())?).await?;
        let status = response.status();
        response.into_body().collect().await?;
        if !status.is_success() {
            return Err(format!("status {status}").into());
        }
        Ok(())
    }

    /// One worker: takes request numbers until none are left; (latency µs, first round).
    async fn worker(self: Arc<Self>) -> Vec<(u32, bool)> {
        let mut samples = Vec::new();
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.args.requests {
                return samples;
            }
            let started = Instant::now();
            if let Err(e) = self.one(i).await {
                if self.errors.fetch_add(1, Ordering::Relaxed) < 5 {
                    eprintln!("h2_mux_bench: request {i}: {e}");
                }
            }
            let micros = started.elapsed().as_micros().min(u32::MAX as u128) as u32;
            samples.push((micros, i < self.args.sandboxes));
        }
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize - 1;
    f64::from(sorted[rank.min(sorted.len() - 1)]) / 1000.0
}

fn main() -> Result<(), Error> {
    let args = parse_args()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let slots = match args.mode {
            Mode::PerHost => args.sandboxes,
            Mode::Header => args.connections,
        };
        let mode = args.mode;
        let concurrency = args.concurrency;
        let run = Arc::new(Run {
            pool: (0..slots).map(|_| OnceCell::new()).collect(),
            args,
            next: AtomicUsize::new(0),
            opened: AtomicUsize::new(0),
            errors: AtomicU64::new(0),
        });
        let started = Instant::now();
        let workers: Vec<_> = (0..concurrency)
            .map(|_| tokio::spawn(run.clone().worker()))
            .collect();
        let mut all = Vec::new();
        for worker in workers {
            all.extend(worker.await?);
        }
        let elapsed = started.elapsed().max(Duration::from_micros(1));
        let mut latencies: Vec<u32> = all.iter().map(|(l, _)| *l).collect();
        let mut first: Vec<u32> = all.iter().filter(|(_, f)| *f).map(|(l, _)| *l).collect();
        latencies.sort_unstable();
        first.sort_unstable();
        let errors = run.errors.load(Ordering::Relaxed);
        println!(
            "RESULT mode={} requests={} errors={errors} seconds={:.3} rps={:.0} \
             p50_ms={:.3} p99_ms={:.3} first_p50_ms={:.3} first_p99_ms={:.3} client_connections={}",
            match mode {
                Mode::PerHost => "per-host",
                Mode::Header => "header",
            },
            latencies.len(),
            elapsed.as_secs_f64(),
            latencies.len() as f64 / elapsed.as_secs_f64(),
            percentile(&latencies, 50.0),
            percentile(&latencies, 99.0),
            percentile(&first, 50.0),
            percentile(&first, 99.0),
            run.opened.load(Ordering::Relaxed),
        );
        if errors > 0 {
            std::process::exit(1);
        }
        Ok(())
    })
}
