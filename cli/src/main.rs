//! `replite`: the command-line tool and (in later issues) the daemon.

mod args;
mod db_file;
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
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("REPLITE_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse_from(args::normalize(std::env::args_os()));
    let result = match cli.command {
        Command::Ltx(cmd) => cmd.run(),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
