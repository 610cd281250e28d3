//! # sluice
//!
//! One binary: name server + broker + HTTP facade, with data in one folder.
//!
//! - `sluice` (no arguments) = `sluice serve` with defaults: name server on 9876, broker on
//!   10911, HTTP on 127.0.0.1:8080, data in `./sluice-data`.
//! - `sluice serve [--data-dir DIR] [--config FILE] [--namesrv-listen ADDR] [--broker-listen ADDR]
//!   [--http-listen ADDR]`
//! - `sluice namesrv [--config FILE] [--listen ADDR]`: a name server alone.
//!
//! Configuration is layered: defaults < `--config` TOML < `SLUICE_*` variables < flags. The
//! effective configuration is logged at start. One line on stdout says when it is ready.
//! SIGTERM or SIGINT: stop accepting, finish in-flight work, flush, mark a clean shutdown,
//! exit 0.

mod config;
mod limits;
mod log_writer;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use std::sync::Arc;

use sluice_broker::{Broker, BrokerExtensions, NameServer};
use sluice_http::HttpFacade;
use sluice_schedule::ScheduleExtension;
use sluice_txn::TxnExtension;

/// mimalloc instead of glibc's malloc: the request path allocates small buffers on tokio
/// workers and frees them on store threads (and back), where glibc's arenas spent ~15 % of the
/// broker's CPU in `_int_malloc`/`_int_free`/`malloc_consolidate` (see docs/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Sluice: transactional and delayed messaging, RocketMQ-compatible"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the name server and the broker (the default).
    Serve(ServeArgs),
    /// Serve a name server only.
    Namesrv(NamesrvArgs),
}

/// `sluice` without a subcommand: serve's arguments, read from the environment alone.
#[derive(Parser)]
struct ServeOnly {
    #[command(flatten)]
    args: ServeArgs,
}

#[derive(Args)]
struct ServeArgs {
    /// Data folder (default ./sluice-data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// TOML configuration file.
    #[arg(long, env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
    /// Name server listen address (default 0.0.0.0:9876).
    #[arg(long)]
    namesrv_listen: Option<SocketAddr>,
    /// Broker listen address (default 0.0.0.0:10911).
    #[arg(long)]
    broker_listen: Option<SocketAddr>,
    /// HTTP listen address (default 127.0.0.1:8080).
    #[arg(long)]
    http_listen: Option<SocketAddr>,
}

#[derive(Args)]
struct NamesrvArgs {
    /// TOML configuration file (its [namesrv] section is used).
    #[arg(long, env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
    /// Listen address (default 0.0.0.0:9876).
    #[arg(long)]
    listen: Option<SocketAddr>,
}

fn main() {
    let cli = Cli::parse();
    init_tracing();
    let open_files = limits::raise_open_files();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            // Parsed, not defaulted: `SLUICE_CONFIG` must count without `serve` too.
            None => serve(ServeOnly::parse_from(["sluice"]).args, open_files).await,
            Some(Command::Serve(args)) => serve(args, open_files).await,
            Some(Command::Namesrv(args)) => namesrv(args).await,
        }
    });
    if let Err(e) = result {
        eprintln!("sluice: {}", describe(&e));
        std::process::exit(1);
    }
}

/// The error and its causes, each said once: a typed error often repeats its source in its own
/// text ("bind 127.0.0.1:9876: Address already in use"), and `{:#}` then printed it twice.
fn describe(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    let mut previous = out.clone();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !previous.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        previous = text;
    }
    out
}

fn init_tracing() {
    let filter = std::env::var("SLUICE_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_string());
    // Colours only on a terminal: in a file, a pipe or journald the escape codes break `grep`
    // and end up in log stores.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(log_writer::EscapedStderr { ansi })
        .with_ansi(ansi)
        .init();
}

/// Refuses a malformed or unknown `SLUICE_CRASH_POINT` before anything is opened, and says
/// loudly when one is armed: it makes the process abort on purpose.
fn arm_crash_point() -> Result<()> {
    if let Some(armed) = sluice_store::crash_point::armed().map_err(anyhow::Error::msg)? {
        tracing::warn!(
            point = %armed.name,
            file = armed.file.as_deref().unwrap_or(""),
            visit = armed.nth,
            "crash point armed: this process will abort there (a test hook)"
        );
    }
    Ok(())
}

/// The file and `SLUICE_*` variables, not yet validated: flags are applied on top first, so
/// a flag can correct what the file says (`--http-listen 127.0.0.1:8080` over a public
/// address without tokens).
fn layered(config: Option<&std::path::Path>) -> Result<config::ServerConfig> {
    config::layered(config, std::env::vars())
}

async fn serve(args: ServeArgs, open_files: limits::OpenFiles) -> Result<()> {
    let started = Instant::now();
    let signals = StopSignals::install()?;
    let mut cfg = layered(args.config.as_deref())?;
    if let Some(d) = args.data_dir {
        cfg.data_dir = d;
    }
    if let Some(a) = args.namesrv_listen {
        cfg.namesrv.listen = a;
    }
    if let Some(a) = args.broker_listen {
        cfg.broker.listen = a;
    }
    if let Some(a) = args.http_listen {
        cfg.http.listen = a;
    }
    cfg.validate()?;
    cfg.check_listeners_apart()?;
    arm_crash_point()?;
    tracing::info!(config = %serde_json::to_string(&cfg).unwrap_or_default(), "effective configuration");
    limits::report(open_files);
    let tls = cfg.tls.load()?;
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    // Before any port is bound: a second start with the same configuration failed on the name
    // server's port, hiding that another process runs on this folder.
    sluice_store::check_folder_free(&cfg.store_config().data_dir).context("store")?;

    let namesrv = if cfg.namesrv.enabled {
        let mut ns_cfg = cfg.namesrv_config();
        ns_cfg.tls = tls.remoting.clone();
        Some(
            NameServer::start(ns_cfg)
                .await
                .context("starting the name server")?,
        )
    } else {
        None
    };
    let local_ns = namesrv.as_ref().map(|n| n.local_addr());
    let (exts, http) = extensions(&cfg, &tls)?;
    let mut broker_cfg = cfg.broker_config(local_ns);
    broker_cfg.tls = tls.remoting.clone();
    broker_cfg.namesrv_tls = tls.registration.clone();
    let broker = Broker::start_with(broker_cfg, exts)
        .await
        .context("starting the broker")?;
    let http_addr = http
        .as_ref()
        .and_then(|h| h.local_addr())
        .map_or("off".to_string(), |a| a.to_string());
    println!(
        "sluice ready: name server {}, broker {}, http {}, data {} ({} ms)",
        local_ns.map_or("off".to_string(), |a| a.to_string()),
        broker.local_addr(),
        http_addr,
        cfg.data_dir.display(),
        started.elapsed().as_millis()
    );
    let forced = signals.wait_then_force().await;
    tracing::info!("shutting down");
    let report = broker.shutdown().await;
    if let Some(ns) = namesrv {
        ns.shutdown().await;
    }
    forced.abort();
    if !report.is_clean() {
        // Not "stopped cleanly": a supervisor must not take this stop for one that saved
        // everything (the next start recovers, or state files are behind).
        bail!("stopped, but not cleanly: {}", report.problems.join("; "));
    }
    println!("sluice stopped cleanly");
    Ok(())
}

/// The broker's extensions: delayed messages (a put hook parks them until their time),
/// transactions (a put hook stores half messages; without it the broker refuses them) and the
/// HTTP facade (last: it starts after the services it calls and stops before them). The
/// schedule hook runs first and is also given to the transaction extension as a commit hook,
/// so a committed message with a delay is delivered at its time.
fn extensions(
    cfg: &config::ServerConfig,
    tls: &config::LoadedTls,
) -> Result<(BrokerExtensions, Option<Arc<HttpFacade>>)> {
    let mut all = BrokerExtensions::default();
    let schedule = if cfg.schedule.enabled {
        Some(ScheduleExtension::new(cfg.schedule.to_config()?))
    } else {
        tracing::info!("delayed messages disabled ([schedule] enabled = false): DELAY and TIMER_* are stored as plain messages");
        // Retry back-off, nack delays and delayed commits all wait in the schedule.
        tracing::warn!("with [schedule] disabled, consumer retries have no back-off: a failed message is redelivered at once, up to its maximum, then dead-lettered; nack delays and delayed commits are not honoured");
        None
    };
    if let Some(s) = &schedule {
        let ext = s.broker_extensions();
        all.put_hooks.extend(ext.put_hooks);
        all.extensions.extend(ext.extensions);
    }
    let mut txn_service = None;
    if cfg.txn.enabled {
        let commit_hooks = schedule.iter().map(ScheduleExtension::put_hook).collect();
        let txn = TxnExtension::new(cfg.txn_config()?).with_commit_hooks(commit_hooks);
        txn_service = Some(txn.service());
        let ext = txn.broker_extensions();
        all.put_hooks.extend(ext.put_hooks);
        all.extensions.extend(ext.extensions);
    } else {
        tracing::info!("transactional messages disabled ([txn] enabled = false)");
    }
    let http = if cfg.http.enabled {
        let mut http_cfg = cfg.http.to_config()?;
        http_cfg.tls = tls.http.clone();
        let facade = HttpFacade::new(
            http_cfg,
            txn_service,
            schedule.as_ref().map(ScheduleExtension::service),
        );
        all.extensions.push(facade.extension());
        Some(facade)
    } else {
        tracing::info!("HTTP facade disabled ([http] enabled = false)");
        None
    };
    Ok((all, http))
}

async fn namesrv(args: NamesrvArgs) -> Result<()> {
    let signals = StopSignals::install()?;
    let mut cfg = layered(args.config.as_deref())?;
    if let Some(a) = args.listen {
        cfg.namesrv.listen = a;
    }
    cfg.validate()?;
    let mut ns_cfg = cfg.namesrv_config();
    ns_cfg.tls = cfg.tls.load()?.remoting;
    let ns = NameServer::start(ns_cfg)
        .await
        .context("starting the name server")?;
    println!("sluice name server ready: {}", ns.local_addr());
    let forced = signals.wait_then_force().await;
    ns.shutdown().await;
    forced.abort();
    println!("sluice name server stopped cleanly");
    Ok(())
}

/// SIGTERM and SIGINT, installed before the ready line is printed: a supervisor may signal
/// the moment it reads that line, and an uninstalled handler would let the default action kill
/// the process without a clean shutdown.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    async fn wait(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }

    /// Waits for the first signal, then keeps listening: a second one ends the process at
    /// once (exit 130), for an operator who will not wait out a slow shutdown. The store then
    /// keeps its abort marker and the next start recovers. Abort the returned task once the
    /// shutdown is done.
    async fn wait_then_force(mut self) -> tokio::task::JoinHandle<()> {
        self.wait().await;
        tokio::spawn(async move {
            self.wait().await;
            eprintln!("sluice: second stop signal; exiting without finishing the shutdown");
            std::process::exit(130);
        })
    }
}
