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
    /// Check a config file and print the effective configuration.
    CheckConfig {
        #[arg(long, short, env = "SANDGATE_CONFIG")]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
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
        Command::CheckConfig { config } => {
            let loaded = Config::load(config.as_deref()).map_err(|e| e.to_string())?;
            let text = toml_text(&loaded)?;
            println!("{text}");
            Ok(())
        }
    }
}

fn toml_text(config: &Config) -> Result<String, String> {
    serde_json::to_string_pretty(config).map_err(|e| e.to_string())
}

async fn serve(config: Config, path: Option<PathBuf>) -> Result<(), String> {
    let running = sandgate::start(config).await.map_err(|e| e.to_string())?;
    // Scripts and tests read this line to learn the bound port (`listen = "127.0.0.1:0"`).
    println!("sandgate listening on http://{}", running.addr);
    tracing::info!(addr = %running.addr, "sandgate listening");
    let shutdown = running.shutdown_token();
    let app = running.app.clone();
    tokio::spawn(async move {
        let Ok(mut hangup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hangup.recv().await.is_some() {
            reload(&app, path.as_deref());
        }
    });
    wait_for_stop_signal().await;
    shutdown.cancel();
    running.wait().await;
    tracing::info!("sandgate stopped");
    Ok(())
}

fn reload(app: &sandgate::proxy::App, path: Option<&std::path::Path>) {
    let Some(registry) = &app.static_registry else {
        return;
    };
    match Config::load(path) {
        Ok(config) => match registry.reload(&config.registry) {
            Ok(n) => {
                app.resolver.invalidate(None);
                app.auth.clear_cache();
                tracing::info!(sandboxes = n, "static registry reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "reload rejected; the previous registry stays in force")
            }
        },
        Err(e) => {
            tracing::error!(error = %e, "reload rejected; the previous registry stays in force")
        }
    }
}

async fn wait_for_stop_signal() {
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("stop signal received");
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
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if config.format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
