//! The binary's side: the command line (`sandgate <command>`) and what each command does. The
//! admin verbs ([`admin`]), `certs dev` ([`certs`]), the demo ([`demo`]) and the request log
//! reader ([`logs`]) live here, above the library they drive.

pub mod admin;
pub mod certs;
pub mod demo;
pub mod domain;
pub mod logs;
mod serve;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::{Config, LogConfig};
use clap::{CommandFactory, Parser, Subcommand};

/// sandgate: the front door to sandboxes. Routes preview URLs (`https://<port>-<sandboxId>.<domain>/`)
/// and toolbox calls (`/toolbox/<sandboxId>/...`) to the runner hosting each sandbox, with
/// authentication, WebSockets, streaming and activity recording.
#[derive(Parser)]
#[command(version = crate::metrics::build::LONG_VERSION, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy with a config file (every key can be overridden by SANDGATE_<SECTION>__<KEY>,
    /// e.g. SANDGATE_SERVER__LISTEN=0.0.0.0:8080). SIGHUP reloads the static registry and the
    /// TLS certificates, and logs the changed keys that need a restart.
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
        /// Where the admin listener (`/metrics`, `/health`, `/ready`) listens (port 0: any free
        /// port; the address is printed).
        #[arg(long, default_value = "127.0.0.1:0")]
        admin_listen: SocketAddr,
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
        command: admin::RegistryCommand,
    },
    /// Mint, list or revoke signed preview URLs (Redis).
    PreviewUrl {
        #[arg(long, short, env = "SANDGATE_CONFIG", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: admin::PreviewUrlCommand,
    },
    /// Query recorded activity (the Redis sorted set `[activity] redis_key`).
    Activity {
        #[arg(long, short, env = "SANDGATE_CONFIG", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: admin::ActivityCommand,
    },
    /// Custom domains: a host name → a sandbox's port, verified by a DNS TXT record or the
    /// control plane (`docs/domains.md`).
    Domain {
        #[arg(long, short, env = "SANDGATE_CONFIG", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: domain::DomainCommand,
    },
    /// Show a sandbox's last requests, from the proxy's admin listener (`--follow`: live).
    Logs(logs::LogsArgs),
    /// Run the SSH gateway (`[ssh]` of the config): `ssh -p 2222 <access token>@<gateway>`.
    SshGateway {
        #[arg(long, short, env = "SANDGATE_CONFIG", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: Option<SshCommand>,
    },
    /// The identity header's signing keys (`[identity]`).
    Identity {
        #[command(subcommand)]
        command: IdentityCommand,
    },
    /// Ask a running `serve` to reload its config (SIGHUP to the pid in `server.pid_file`).
    Reload {
        /// The pid file `serve` writes (`server.pid_file`).
        #[arg(long)]
        pid_file: PathBuf,
    },
    /// Upgrade a running `serve` without dropping a connection: SIGUSR2 to the pid in
    /// `server.pid_file`; it starts the binary again (a replaced file runs the new version),
    /// hands over its listeners and drains. Waits until the new pid is in the file.
    Upgrade {
        /// The pid file `serve` writes (`server.pid_file`).
        #[arg(long)]
        pid_file: PathBuf,
    },
    /// Check a config file as `serve` would (registry, certificates, files) without starting:
    /// prints `OK: FILE: …` or every error (exit 1).
    CheckConfig {
        #[arg(long, short, env = "SANDGATE_CONFIG")]
        config: Option<PathBuf>,
        /// Also print the effective configuration (TOML, secrets redacted).
        #[arg(long)]
        print: bool,
    },
    /// Print a shell completion script, e.g. `sandgate completions bash >
    /// /etc/bash_completion.d/sandgate`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `sandgate man > /usr/local/share/man/man1/sandgate.1`;
    /// with --dir, write it and one page per command (`sandgate-serve.1`, …) into that folder.
    Man {
        #[arg(long)]
        dir: Option<PathBuf>,
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
enum IdentityCommand {
    /// Write a new PKCS#8 PEM private key to --out (mode 0600; never overwrites), for
    /// `[[identity.keys]] private_key_file`.
    Keygen {
        #[arg(long, value_enum, default_value = "eddsa")]
        algorithm: KeyAlgorithm,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum KeyAlgorithm {
    Eddsa,
    Es256,
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

/// One core available (a pinned proxy, a one-CPU container): a current-thread runtime, which
/// skips the multi-thread scheduler's cross-thread hand-offs it could not use anyway.
/// `SANDGATE_WORKER_THREADS` overrides the count (1: current-thread).
fn runtime_builder() -> tokio::runtime::Builder {
    let workers = worker_threads()
        .or_else(|| std::thread::available_parallelism().ok().map(usize::from))
        .unwrap_or(1);
    if workers == 1 {
        return tokio::runtime::Builder::new_current_thread();
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(workers);
    builder
}

/// `SANDGATE_WORKER_THREADS`: the main runtime's workers and `server.threads`.
fn worker_threads() -> Option<usize> {
    std::env::var("SANDGATE_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
}

/// Runs one command line to its end: the runtime, the command, the exit code.
pub fn main(cli: Cli) -> ExitCode {
    if let Command::CheckConfig { config: None, .. } = cli.command {
        eprintln!(
            "sandgate: check-config needs the file to check: sandgate check-config -c FILE \
             (or SANDGATE_CONFIG=FILE)"
        );
        return ExitCode::from(2);
    }
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
            // Every line prefixed: a config with several errors prints one per line.
            for line in message.lines() {
                eprintln!("sandgate: {line}");
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Serve { config } => {
            let (mut loaded, summary) =
                crate::app::load_checked(config.as_deref()).map_err(|e| e.to_string())?;
            if config.is_none() {
                eprintln!(
                    "sandgate: WARNING: no config file (-c FILE or SANDGATE_CONFIG): running the \
                     built-in defaults: {summary}"
                );
            }
            if let Some(threads) = worker_threads() {
                loaded.server.threads = threads;
            }
            init_logging(&loaded.log);
            serve::serve(loaded, config).await
        }
        Command::Demo {
            listen,
            runner_listen,
            admin_listen,
            runner_only,
            runner_key,
        } => {
            init_logging(&LogConfig::default());
            let listen = demo::DemoListen {
                proxy: listen,
                admin: admin_listen,
                runner: runner_listen,
            };
            demo::run(listen, runner_only, runner_key).await
        }
        Command::Certs {
            command: CertsCommand::Dev { domain, dir },
        } => certs::dev(&dir, &domain),
        Command::Registry { config, command } => {
            let loaded = redis_config(config.as_deref())?;
            admin_output(admin::registry(&loaded, command).await)
        }
        Command::PreviewUrl { config, command } => {
            let loaded = redis_config(config.as_deref())?;
            admin_output(admin::preview_url(&loaded, command).await)
        }
        Command::Activity { config, command } => {
            let loaded = redis_config(config.as_deref())?;
            admin_output(admin::activity(&loaded, command).await)
        }
        Command::Domain { config, command } => {
            let loaded = Config::load(config.as_deref()).map_err(|e| e.to_string())?;
            let name = config
                .as_deref()
                .map_or("the built-in defaults".into(), |p| p.display().to_string());
            admin_output(domain::run(&loaded, &name, command).await)
        }
        Command::Logs(args) => logs::run(args).await,
        Command::SshGateway {
            command: Some(SshCommand::Keygen { out }),
            ..
        } => {
            let public = crate::ssh::keygen(&out).map_err(|e| e.to_string())?;
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
            serve::ssh_gateway(loaded).await
        }
        Command::Identity {
            command: IdentityCommand::Keygen { algorithm, out },
        } => {
            use crate::config::identity::IdentityAlgorithm;
            let algorithm = match algorithm {
                KeyAlgorithm::Eddsa => IdentityAlgorithm::EdDSA,
                KeyAlgorithm::Es256 => IdentityAlgorithm::ES256,
            };
            crate::auth::identity::keygen(&out, algorithm)?;
            println!(
                "wrote {}: [[identity.keys]] algorithm = \"{algorithm:?}\"",
                out.display()
            );
            Ok(())
        }
        Command::Completions { shell } => print_generated(|out| {
            use clap_complete::Generator;
            // What `clap_complete::generate` does, without its panic on a write error.
            let mut command = Cli::command();
            command.set_bin_name("sandgate");
            command.build();
            shell.try_generate(&command, out)
        }),
        Command::Man { dir: None } => {
            print_generated(|out| clap_mangen::Man::new(Cli::command()).render(out))
        }
        Command::Man { dir: Some(dir) } => {
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            clap_mangen::generate_to(Cli::command(), &dir)
                .map_err(|e| format!("{}: {e}", dir.display()))?;
            println!("wrote the man pages into {}", dir.display());
            Ok(())
        }
        Command::Reload { pid_file } => serve::signal_reload(&pid_file),
        Command::Upgrade { pid_file } => serve::signal_upgrade(&pid_file),
        Command::CheckConfig { config, print } => {
            let path = config.ok_or("check-config needs -c FILE")?;
            let (loaded, summary) =
                crate::app::load_checked(Some(&path)).map_err(|e| e.to_string())?;
            println!("OK: {}: {summary}", path.display());
            if print {
                print!("{}", crate::config::redact::redacted_toml(&loaded)?);
            }
            Ok(())
        }
    }
}

/// Writes generated text (completions, man page) to stdout; a closed pipe (`| head`) is not
/// an error worth a message.
fn print_generated(
    write: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    match write(&mut out).and_then(|()| std::io::Write::flush(&mut out)) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.to_string()),
        _ => Ok(()),
    }
}

fn admin_output(result: Result<String, admin::AdminError>) -> Result<(), String> {
    let text = result.map_err(|e| e.to_string())?;
    if !text.is_empty() {
        println!("{text}");
    }
    Ok(())
}

/// The config of a Redis verb; refused, saying why, when that config does not use Redis.
fn redis_config(path: Option<&std::path::Path>) -> Result<Config, String> {
    let loaded = Config::load(path).map_err(|e| e.to_string())?;
    let name = path.map_or("the built-in defaults".into(), |p| p.display().to_string());
    admin::needs_redis(&loaded, &name).map_err(|e| e.to_string())?;
    Ok(loaded)
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
    let ansi = colours_wanted(
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = if config.format == "json" {
        builder.json().try_init()
    } else {
        use tracing_subscriber::field::MakeExt;
        let fields = tracing_subscriber::fmt::format::debug_fn(logfmt_field).delimited(" ");
        builder.fmt_fields(fields).try_init()
    };
}

/// Writes one field of a text log line as logfmt: `key=value`, the value quoted (and escaped)
/// when it has a space, a quote, an `=` or a control character, so a reader never splits an
/// error message into stray keys. The message is written as it is.
fn logfmt_field(
    writer: &mut tracing_subscriber::fmt::format::Writer<'_>,
    field: &tracing::field::Field,
    value: &dyn std::fmt::Debug,
) -> std::fmt::Result {
    if field.name() == "message" {
        return write!(writer, "{value:?}");
    }
    let text = format!("{value:?}");
    write!(writer, "{}=", field.name())?;
    match needs_quotes(&text) {
        true => write!(writer, "{text:?}"),
        false => writer.write_str(&text),
    }
}

/// A value needs quoting unless it is one bare word, or already a quoted string (`?` on a
/// `str` or `String` renders it quoted and escaped).
fn needs_quotes(text: &str) -> bool {
    let bare = |c: char| !(c.is_whitespace() || c.is_control() || c == '"' || c == '=');
    !already_quoted(text) && (text.is_empty() || !text.chars().all(bare))
}

/// `text` is one quoted string as `?` renders it: it starts and ends with `"`, every quote in
/// between is escaped and no control character is raw. A `Display` value that merely starts
/// and ends with a quote (`"a"\nINFO fake="b"`) is not, and could forge a line.
fn already_quoted(text: &str) -> bool {
    let Some(inner) = text
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
    else {
        return false;
    };
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            // The escaped character is skipped; a trailing `\` escapes the closing quote.
            '\\' if chars.next().is_none() => return false,
            '"' => return false,
            c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => return false,
            _ => {}
        }
    }
    true
}

/// Colours only for a terminal (in a file, a pipe or journald the escapes are noise for every
/// reader) and only while `NO_COLOR` is unset or empty (<https://no-color.org>).
fn colours_wanted(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logfmt_values_are_quoted_only_when_they_must_be() {
        for (value, quoted) in [
            ("502", false),
            ("127.0.0.1:8080", false),
            ("30s", false),
            ("\"already quoted\"", false),
            (
                "connecting to x failed: Connection refused (os error 111)",
                true,
            ),
            ("a=b", true),
            ("say \"hi", true),
            ("line\nbreak", true),
            ("", true),
            ("\"", true),
            ("\"\"", false),
            (r#""esc \" quote \\ and \n""#, false),
            ("\"a\"\nINFO fake=\"b\"", true),
            (r#""a" fake="b""#, true),
            ("\"a\tb\"", true),
            ("\"a\u{2028}b\"", true),
            (r#""ends in \""#, true),
            (r#""ends in \\""#, false),
        ] {
            assert_eq!(needs_quotes(value), quoted, "{value:?}");
        }
    }

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        let cases: [(bool, Option<&str>, bool); 5] = [
            (true, None, true),
            (true, Some(""), true),
            (true, Some("1"), false),
            (false, None, false),
            (false, Some("1"), false),
        ];
        for (terminal, no_color, expected) in cases {
            let no_color = no_color.map(std::ffi::OsStr::new);
            assert_eq!(
                colours_wanted(terminal, no_color),
                expected,
                "{terminal} {no_color:?}"
            );
        }
    }
}
