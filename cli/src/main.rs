//! `replite`: the command-line tool and (in later issues) the daemon.

mod args;
mod ltx_cmd;
mod timefmt;

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
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("REPLITE_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse_from(args::normalize(std::env::args_os()));
    let result = match cli.command {
        Command::Ltx(cmd) => cmd.run(),
        Command::ConfigCheck { config } => config_check(config.as_deref()),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn config_check(path: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    let (config, found) = replite::config::Config::load(path)?;
    println!("{}: ok (lease: {}, fuse.dir: {})", found.display(), config.lease.kind, config.fuse.dir.display());
    Ok(ExitCode::SUCCESS)
}
