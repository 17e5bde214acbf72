//! `replite`: the command-line tool and (in later issues) the daemon.

mod args;
mod bench;
mod dev;
mod ltx_cmd;
mod node_cmd;
mod run_cmd;
mod transfer_cmd;
use replite::timefmt;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Live replication for SQLite.
#[derive(Debug, Parser)]
#[command(name = "replite", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Inspect, verify, build and apply LTX files.
    #[command(subcommand)]
    Ltx(ltx_cmd::LtxCommand),
    /// Check a config file (LiteFS's keys and replite's) and say where it was found.
    ConfigCheck {
        /// Config file; default: replite.yml or litefs.yml in ., $HOME, then /etc.
        #[arg(long)]
        config: Option<std::path::PathBuf>,
    },
    /// Mount the databases, join the cluster, then run a command (after `--`, or `exec:` from
    /// the config) until it exits.
    Mount {
        /// Config file; default: replite.yml or litefs.yml in ., $HOME, then /etc.
        #[arg(long)]
        config: Option<std::path::PathBuf>,
        /// The command to run once this node is primary or in sync with the primary.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Run a local cluster (three nodes on 127.0.0.1, etcd when installed) with a live view.
    Dev(dev::DevArgs),
    /// Show a node's role, epoch, positions and replication lag.
    Status(node_cmd::StatusArgs),
    /// Make a node primary (it asks the current primary to hand off, or takes a free lease).
    Promote(node_cmd::NodeArgs),
    /// Run a command with a guarantee from the local node (LiteFS's `run`): `-promote`,
    /// `-if-candidate`, or `-with-halt-lock-on DB` to write DB from a replica.
    Run(run_cmd::RunArgs),
    /// Ask the primary to hand its lease to a replica.
    Handoff(node_cmd::HandoffArgs),
    /// Upload a SQLite database to the primary, creating or replacing database NAME there.
    Import(transfer_cmd::TransferArgs),
    /// Download a consistent copy of database NAME from a node into FILE.
    Export(transfer_cmd::TransferArgs),
    /// Measure SQLite natively, on a single node and on a primary + replica pair (in this
    /// process, on 127.0.0.1), plus replication lag and snapshot catch-up; print a table.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(args::normalize(std::env::args_os()));
    // `mount`'s config is read once, before logging starts: its `log:` section sets it up.
    let mount_config = match &cli.command {
        Command::Mount { config, .. } => Some(replite::config::Config::load(config.as_deref())),
        _ => None,
    };
    init_logging(mount_config.as_ref().and_then(|loaded| loaded.as_ref().ok()).map(|(c, _)| &c.log));
    if matches!(cli.command, Command::Mount { .. } | Command::Dev(_) | Command::Bench(_)) {
        // Before any thread starts (see `fd_limit`); a refusal only leaves the limit as it was.
        if let Err(e) = replite::fd_limit::raise() {
            tracing::warn!(error = %e, "raising the open-file limit failed");
        }
    }
    let result = match cli.command {
        Command::Ltx(cmd) => cmd.run(),
        Command::ConfigCheck { config } => config_check(config.as_deref()),
        Command::Mount { command, .. } => match mount_config {
            Some(Ok((config, found))) => runtime().and_then(|rt| {
                rt.block_on(replite::daemon::mount(replite::daemon::MountArgs { config, found, command }))
            }),
            Some(Err(e)) => Err(e.into()),
            None => unreachable!("the mount command's config was loaded above"),
        },
        Command::Dev(args) => dev::run(args),
        Command::Status(args) => runtime().and_then(|rt| rt.block_on(node_cmd::status(args))),
        Command::Promote(args) => runtime().and_then(|rt| rt.block_on(node_cmd::promote(args))),
        Command::Run(args) => runtime().and_then(|rt| rt.block_on(run_cmd::run(args))),
        Command::Handoff(args) => runtime().and_then(|rt| rt.block_on(node_cmd::handoff(args))),
        Command::Import(args) => runtime().and_then(|rt| rt.block_on(transfer_cmd::import(args))),
        Command::Export(args) => runtime().and_then(|rt| rt.block_on(transfer_cmd::export(args))),
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr, filtered by `REPLITE_LOG` (tracing's filter syntax) when it is set.
/// With `log` (`mount`'s config) replite logs at INFO (its own crates at DEBUG with
/// `log.debug`), as LiteFS does, and follows `log.format` and `log.timestamp` (off by default:
/// LiteFS's default, for log collectors that stamp lines themselves); the other commands log
/// warnings and errors.
fn init_logging(log: Option<&replite::config::LogConfig>) {
    use replite::config::LogFormat;
    // fuser warns once per mount about each operation the file system leaves to the kernel
    // (getxattr of security.capability at the first write, say): noise, not a problem.
    let default = match &log {
        Some(l) if l.debug => "info,fuser=error,replite=debug,replite_core=debug,replite_fuse=debug",
        Some(_) => "info,fuser=error",
        None => "warn,fuser=error",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("REPLITE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colours only for a terminal: a log file or collector would get escape codes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match log {
        Some(l) if l.format == LogFormat::Json && l.timestamp => builder.json().init(),
        Some(l) if l.format == LogFormat::Json => builder.json().without_time().init(),
        Some(l) if !l.timestamp => builder.without_time().init(),
        _ => builder.init(),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn config_check(path: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    let (config, found) = replite::config::Config::load(path)?;
    println!("{}: ok (lease: {}, fuse.dir: {})", found.display(), config.lease.kind, config.fuse.dir.display());
    Ok(ExitCode::SUCCESS)
}
