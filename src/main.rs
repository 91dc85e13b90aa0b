use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sandgate::config::{Config, LogConfig};
use tokio::signal::unix::{signal, SignalKind};

/// sandgate: the front door to sandboxes. Routes preview URLs (`https://<port>-<sandboxId>.<domain>/`)
/// and toolbox calls (`/toolbox/<sandboxId>/...`) to the runner hosting each sandbox, with
/// authentication, WebSockets, streaming and activity recording.
#[derive(Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy with a config file (every key can be overridden by SANDGATE_<SECTION>__<KEY>,
    /// e.g. SANDGATE_SERVER__LISTEN=0.0.0.0:8080). SIGHUP reloads the static registry.
    Serve {
        /// The TOML config file (see config/example.toml).
        #[arg(long, short, env = "SANDGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Run the proxy with a built-in demo runner: open http://3000-demo.preview.localhost:8080/
    Demo {
        /// Where the proxy listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Where the demo runner listens (port 0: any free port).
        #[arg(long, default_value = "127.0.0.1:0")]
        runner_listen: SocketAddr,
        /// Run only the demo runner (an upstream for benchmarks), not the proxy.
        #[arg(long)]
        runner_only: bool,
        /// The runner's API key (what the proxy must send as X-Daytona-Authorization).
        #[arg(long, default_value = "demo-runner-key")]
        runner_key: String,
    },
    /// Generate a local CA and a wildcard certificate for HTTPS previews during development.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Manage runners and sandboxes in the Redis registry (`[redis]` of the config).
    Registry {
        #[arg(long, short, env = "SANDGATE_CONFIG", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: sandgate::admin::RegistryCommand,
    },
    /// Mint or revoke signed preview URLs (Redis).
    PreviewUrl {
        #[arg(long, short, env = "SANDGATE_CONFIG", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: sandgate::admin::PreviewUrlCommand,
    },
    /// Query recorded activity (the Redis sorted set `[activity] redis_key`).
    Activity {
        #[arg(long, short, env = "SANDGATE_CONFIG", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: sandgate::admin::ActivityCommand,
    },
    /// Run the SSH gateway (`[ssh]` of the config): `ssh -p 2222 <access token>@<gateway>`.
    SshGateway {
        #[arg(long, short, env = "SANDGATE_CONFIG", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: Option<SshCommand>,
    },
    /// Check a config file and print the effective configuration.
    CheckConfig {
        #[arg(long, short, env = "SANDGATE_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum SshCommand {
    /// Write a new Ed25519 key to --out (and its public key to --out.pub); never overwrites.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Write dev-ca.pem, <domain>.pem and <domain>.key (for <domain> and *.<domain>) into --dir.
    Dev {
        #[arg(long, default_value = "preview.localhost")]
        domain: String,
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
    },
}

/// mimalloc: the proxy makes many small short-lived allocations per request, which its
/// per-thread free lists serve faster than glibc's malloc (measured in loadtest/RESULTS.md).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One core available (a pinned proxy, a one-CPU container): a current-thread runtime, which
/// skips the multi-thread scheduler's cross-thread hand-offs it could not use anyway.
/// `SANDGATE_WORKER_THREADS` overrides the count (1: current-thread).
fn runtime_builder() -> tokio::runtime::Builder {
    let workers = std::env::var("SANDGATE_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .or_else(|| std::thread::available_parallelism().ok().map(usize::from))
        .unwrap_or(1);
    if workers == 1 {
        return tokio::runtime::Builder::new_current_thread();
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(workers);
    builder
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match runtime_builder().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sandgate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("sandgate: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Serve { config } => {
            let loaded = Config::load(config.as_deref()).map_err(|e| e.to_string())?;
            init_logging(&loaded.log);
            serve(loaded, config).await
        }
        Command::Demo {
            listen,
            runner_listen,
            runner_only,
            runner_key,
        } => {
            init_logging(&LogConfig::default());
            demo(listen, runner_listen, runner_only, runner_key).await
        }
        Command::Certs {
            command: CertsCommand::Dev { domain, dir },
        } => {
            let [ca, cert, key] = sandgate::tls::generate_dev_certs(&dir, &domain)?;
            println!(
                "wrote {}, {} and {}",
                ca.display(),
                cert.display(),
                key.display()
            );
            println!("serve HTTPS with, in your config:");
            println!("  [tls]\n  enabled = true\n  listen = \"127.0.0.1:8443\"");
            println!(
                "  [[tls.certs]]\n  cert = \"{}\"\n  key = \"{}\"",
                cert.display(),
                key.display()
            );
            println!(
                "trust the CA: curl --cacert {} https://3000-demo.{domain}:8443/",
                ca.display()
            );
            println!("  or system-wide (Debian): cp {} /usr/local/share/ca-certificates/sandgate-dev.crt && update-ca-certificates", ca.display());
            Ok(())
        }
        Command::Registry { config, command } => {
            let loaded = Config::load(config.as_deref()).map_err(|e| e.to_string())?;
            admin_output(sandgate::admin::registry(&loaded, command).await)
        }
        Command::PreviewUrl { config, command } => {
            let loaded = Config::load(config.as_deref()).map_err(|e| e.to_string())?;
            admin_output(sandgate::admin::preview_url(&loaded, command).await)
        }
        Command::Activity { config, command } => {
            let loaded = Config::load(config.as_deref()).map_err(|e| e.to_string())?;
            admin_output(sandgate::admin::activity(&loaded, command).await)
        }
        Command::SshGateway {
            command: Some(SshCommand::Keygen { out }),
            ..
        } => {
            let public = sandgate::ssh::keygen(&out).map_err(|e| e.to_string())?;
            let line = public.to_openssh().map_err(|e| e.to_string())?;
            println!("wrote {} and {}.pub: {line}", out.display(), out.display());
            Ok(())
        }
        Command::SshGateway {
            config,
            command: None,
        } => {
            let loaded = Config::load(config.as_deref()).map_err(|e| e.to_string())?;
            init_logging(&loaded.log);
            ssh_gateway(loaded).await
        }
        Command::CheckConfig { config } => {
            let loaded = Config::load(config.as_deref()).map_err(|e| e.to_string())?;
            let text = toml_text(&loaded)?;
            println!("{text}");
            Ok(())
        }
    }
}

fn admin_output(result: Result<String, sandgate::admin::AdminError>) -> Result<(), String> {
    let text = result.map_err(|e| e.to_string())?;
    if !text.is_empty() {
        println!("{text}");
    }
    Ok(())
}

fn toml_text(config: &Config) -> Result<String, String> {
    serde_json::to_string_pretty(config).map_err(|e| e.to_string())
}

async fn serve(config: Config, path: Option<PathBuf>) -> Result<(), String> {
    let running = sandgate::start(config).await.map_err(|e| e.to_string())?;
    // Handle the signals before saying we listen: a SIGTERM or SIGHUP sent right after that line
    // would otherwise hit the default action and kill the process (no drain, no reload).
    let stop = stop_signal();
    let hangup = signal(SignalKind::hangup());
    // Scripts and tests read this line to learn the bound port (`listen = "127.0.0.1:0"`).
    println!("sandgate listening on http://{}", running.addr);
    if let Some(addr) = running.tls_addr {
        println!("sandgate listening on https://{addr}");
    }
    if let Some(addr) = running.admin_addr {
        println!("sandgate admin on http://{addr}");
    }
    tracing::info!(addr = %running.addr, tls = ?running.tls_addr, admin = ?running.admin_addr, "sandgate listening");
    let shutdown = running.shutdown_token();
    let app = running.app.clone();
    tokio::spawn(async move {
        let Ok(mut hangup) = hangup else {
            return;
        };
        while hangup.recv().await.is_some() {
            reload(&app, path.as_deref());
        }
    });
    stop.await;
    shutdown.cancel();
    running.wait().await;
    tracing::info!("sandgate stopped");
    Ok(())
}

async fn ssh_gateway(config: Config) -> Result<(), String> {
    let running = sandgate::ssh::start(config)
        .await
        .map_err(|e| e.to_string())?;
    let stop = stop_signal();
    println!("sandgate ssh gateway listening on {}", running.addr);
    if let Some(addr) = running.admin_addr {
        println!("sandgate admin on http://{addr}");
    }
    tracing::info!(addr = %running.addr, "sandgate ssh gateway listening");
    let shutdown = running.shutdown_token();
    stop.await;
    shutdown.cancel();
    running.wait().await;
    Ok(())
}

/// Reloads what can change without a restart: the static registry and the TLS certificates.
/// Each part is swapped whole or not at all; a bad file leaves the one in force.
fn reload(app: &sandgate::proxy::App, path: Option<&std::path::Path>) {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!(error = %e, "reload rejected; the previous configuration stays in force");
            return;
        }
    };
    if let Some(registry) = &app.static_registry {
        match registry.reload(&config.registry) {
            Ok(n) => {
                app.resolver.invalidate(None);
                app.auth.clear_cache();
                tracing::info!(sandboxes = n, "static registry reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "registry reload rejected; the previous registry stays in force")
            }
        }
    }
    if let Some(certs) = &app.certs {
        match certs.reload(&config.tls) {
            Ok(()) => tracing::info!("TLS certificates reloaded"),
            Err(e) => {
                tracing::error!(error = %e, "certificate reload rejected; the previous certificates stay in force")
            }
        }
    }
}

async fn wait_for_stop_signal() {
    stop_signal().await
}

/// Registers the SIGTERM and SIGINT handlers now; the future resolves when one arrives.
fn stop_signal() -> impl std::future::Future<Output = ()> {
    let term = signal(SignalKind::terminate());
    let interrupt = signal(SignalKind::interrupt());
    async move {
        match (term, interrupt) {
            (Ok(mut term), Ok(mut interrupt)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = interrupt.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        tracing::info!("stop signal received");
    }
}

async fn demo(
    listen: SocketAddr,
    runner_listen: SocketAddr,
    runner_only: bool,
    runner_key: String,
) -> Result<(), String> {
    let runner = tokio::net::TcpListener::bind(runner_listen)
        .await
        .map_err(|e| format!("cannot listen on {runner_listen}: {e}"))?;
    let runner_addr = runner.local_addr().map_err(|e| e.to_string())?;
    let runner_task = tokio::spawn(sandgate::demo::run_demo_runner(runner, runner_key));
    if runner_only {
        println!("demo runner listening on http://{runner_addr}");
        wait_for_stop_signal().await;
        runner_task.abort();
        return Ok(());
    }
    let config = Config::from_toml_str(&sandgate::demo::demo_config(listen, runner_addr))
        .map_err(|e| e.to_string())?;
    let running = sandgate::start(config).await.map_err(|e| e.to_string())?;
    let port = running.addr.port();
    println!("sandgate demo is running.");
    println!("  open        http://3000-demo.preview.localhost:{port}/");
    println!("  or          curl http://3000-demo.preview.localhost:{port}/hello");
    println!("  toolbox     curl -H 'X-Daytona-Preview-Token: demo-token' http://127.0.0.1:{port}/toolbox/demo/version");
    println!("  health      curl http://127.0.0.1:{port}/health");
    println!("Ctrl-C stops it.");
    let shutdown = running.shutdown_token();
    wait_for_stop_signal().await;
    shutdown.cancel();
    running.wait().await;
    runner_task.abort();
    Ok(())
}

fn init_logging(config: &LogConfig) {
    use tracing_subscriber::EnvFilter;
    // rustls warns on every handshake whose SNI is an IP address (scanners, health checks):
    // not the operator's problem, so its warnings stay out unless asked for.
    let directives = if config.level.contains("rustls") {
        config.level.clone()
    } else {
        format!("{},rustls=error", config.level)
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(directives));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if config.format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
