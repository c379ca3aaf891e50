//! The `xmpp-lb` command: run the proxy, check a configuration, ask where a user lands, make
//! a secret; and, hidden, write its own man page and shell completions for the package.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use xmpp_lb::runtime::{Runtime, StateRegistry};
use xmpp_lb::{CancellationToken, Config};

/// A protocol-aware XMPP load balancer: terminates TLS, learns who connects, and hashes each
/// user onto the same backend node every time.
#[derive(Parser)]
// The summary is this doc comment (man page and --help), not the package's description.
#[command(version, long_about = None)]
struct Cli {
    /// The TOML configuration file (see config/example.toml).
    #[arg(long, short, global = true, env = "XMPP_LB_CONFIG")]
    config: Option<PathBuf>,
    /// Log filter, e.g. "info" or "xmpp_lb=debug" (RUST_LOG syntax).
    #[arg(long, global = true, env = "XMPP_LB_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (the default when no command is given).
    Run,
    /// Validate the configuration: exit 0 if good, else 1 with FILE:LINE:COLUMN: KEY: message.
    Check,
    /// Print the name of the backend a JID is routed to under the configuration.
    Route {
        /// The user's JID, e.g. juliet@example.test (a resource is ignored).
        jid: String,
        /// The client's IP address, needed when routing by subnet.
        #[arg(long)]
        ip: Option<IpAddr>,
    },
    /// Drain a backend of a running proxy: no new logins; connected clients are moved
    /// (drain.mode = "redirect") or left until they leave ("wait").
    Drain {
        /// The running proxy's admin address (its [metrics] bind), e.g. 127.0.0.1:9464.
        #[arg(long)]
        admin: String,
        /// The backend name.
        backend: String,
    },
    /// Undo `drain`: the backend takes new logins again.
    Undrain {
        /// The running proxy's admin address.
        #[arg(long)]
        admin: String,
        /// The backend name.
        backend: String,
    },
    /// Ask a running proxy to reload its configuration file (as SIGHUP does).
    Reload {
        /// The running proxy's admin address.
        #[arg(long)]
        admin: String,
    },
    /// Write a new random secret to PATH (mode 0600), in the format of sm_key_files,
    /// tls_ticket_key_files and the admin token file.
    Keygen {
        /// The file to create.
        path: PathBuf,
        /// Replace PATH if it exists (every session or ticket its old secret protects is lost
        /// once no proxy lists it any more).
        #[arg(long)]
        force: bool,
    },
    /// Write the man pages (roff) into DIR: xmpp-lb.1 and one xmpp-lb-COMMAND.1 per command.
    #[command(hide = true)]
    Man {
        /// An existing directory.
        dir: PathBuf,
    },
    /// Print the completion script for SHELL on standard output.
    #[command(hide = true)]
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xmpp-lb: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Some(Command::Drain { admin, backend }) => {
            return admin_post(admin, &format!("/backends/{backend}/drain"));
        }
        Some(Command::Undrain { admin, backend }) => {
            return admin_post(admin, &format!("/backends/{backend}/undrain"));
        }
        Some(Command::Reload { admin }) => return admin_post(admin, "/reload"),
        Some(Command::Keygen { path, force }) => {
            xmpp_lb::secrets::write_new(path, *force)?;
            println!("{}: a new secret (mode 0600)", path.display());
            return Ok(ExitCode::SUCCESS);
        }
        Some(Command::Man { dir }) => {
            clap_mangen::generate_to(Cli::command(), dir)
                .with_context(|| format!("writing the man pages into {}", dir.display()))?;
            return Ok(ExitCode::SUCCESS);
        }
        Some(Command::Completions { shell }) => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "xmpp-lb",
                &mut std::io::stdout(),
            );
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let path = cli
        .config
        .clone()
        .context("no configuration given: use --config PATH")?;
    let config = Config::load(&path)?;
    match cli.command.unwrap_or(Command::Run) {
        Command::Check => {
            // The proxy puts a configuration into service with Runtime::build, at start and on
            // every reload; check builds it the same way, so that certificates that do not match
            // their keys, a bad pin file or routing policy, and an empty or published admin token
            // fail here rather than at the first client or the next reload.
            let runtime = build(config)?;
            let config = runtime.config();
            println!(
                "{}: OK ({} listeners, {} backends)",
                path.display(),
                config.listeners.len(),
                config.backends.len()
            );
            // Key ids (never the secrets), so that an operator can see that every proxy of a
            // fleet holds the same keys, the issuing one first.
            let ids = |keys: &[xmpp_lb::keys::FleetKey]| {
                keys.iter()
                    .map(|k| k.id_hex())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let r = &config.resumption;
            if !r.sm_keys.is_empty() {
                println!("stream-management id keys: {}", ids(&r.sm_keys));
            }
            if !r.tls_ticket_keys.is_empty() {
                println!(
                    "TLS ticket keys: {} (a new ticket key every {})",
                    ids(&r.tls_ticket_keys),
                    humantime_serde::re::humantime::format_duration(r.tls_ticket_rotation)
                );
            }
            // A warning, not an error: the file is still good, but a secret others can read
            // protects less than it should.
            for exposed in xmpp_lb::secrets::exposed(config) {
                eprintln!("warning: {exposed}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Route { jid, ip } => {
            // Pins, policies (and certificates) are loaded exactly as the proxy loads them;
            // the admin token is not needed (its file may be readable by the service only).
            let mut config = config;
            config.metrics_token_file = None;
            let runtime = build(config)?;
            let explained =
                xmpp_lb::route::explain::explain(&runtime, &jid, ip).map_err(anyhow::Error::msg)?;
            print!("{explained}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Drain { .. }
        | Command::Undrain { .. }
        | Command::Reload { .. }
        | Command::Keygen { .. }
        | Command::Man { .. }
        | Command::Completions { .. } => {
            unreachable!("handled above")
        }
        Command::Run => {
            // The format comes from the file (`log_format`), the filter from the command line.
            let logs = xmpp_lb::logging::init(&cli.log, config.log_format).context("--log")?;
            let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
            let served = runtime.block_on(serve(config));
            // Flush queued log lines before the process exits.
            drop(logs);
            served?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Put `config` into service as the proxy does ([`Runtime::build`]), without serving it.
fn build(config: Config) -> anyhow::Result<Runtime> {
    // A build error's message already ends with its cause: as a plain message, the cause is
    // not printed a second time.
    Runtime::build(config, &StateRegistry::default()).map_err(|e| anyhow::Error::msg(e.to_string()))
}

/// POST to a running proxy's admin endpoint and print its answer.
fn admin_post(admin: &str, path: &str) -> anyhow::Result<ExitCode> {
    let url = format!("http://{admin}{path}");
    let token = std::env::var("XMPP_LB_ADMIN_TOKEN").ok();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(10)))
        .build()
        .into();
    // Without a token the proxy takes a POST only with this header, which a web page cannot
    // make a browser send across origins.
    let mut request = agent.post(&url).header("X-Requested-By", "xmpp-lb");
    if let Some(t) = &token {
        request = request.header("Authorization", &format!("Bearer {t}"));
    }
    let mut response = request.send_empty().with_context(|| url.clone())?;
    let body = response.body_mut().read_to_string().unwrap_or_default();
    if response.status().is_success() {
        println!("{}", body.trim());
        Ok(ExitCode::SUCCESS)
    } else {
        anyhow::bail!("{url}: HTTP {}: {}", response.status(), body.trim())
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let server = xmpp_lb::Server::bind(config).await?;
    // Every listener is bound and listening: a client's connect succeeds from here on (it
    // waits in the backlog until the accept loops run), so the service has started.
    let listening = server.local_addrs().len();
    xmpp_lb::notify::ready(&format!("serving on {listening} listening sockets"));
    let stop = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        xmpp_lb::notify::stopping();
        stop.cancel();
    });
    server.run(shutdown).await;
    Ok(())
}

/// SIGINT or SIGTERM.
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
