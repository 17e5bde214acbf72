//! `replite ltx …`: the reference `ltx` tool's commands (superfly/ltx v0.3), with its options
//! and output layout, over replite's codec.

mod apply;
mod checksum;
mod dump;
mod encode_db;
mod list;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

/// The `ltx` subcommands.
#[derive(Debug, Subcommand)]
pub enum LtxCommand {
    /// Write out the header, page numbers and trailer of one LTX file.
    Dump {
        /// The LTX file.
        path: PathBuf,
    },
    /// Read LTX files and verify every rule and checksum.
    Verify {
        /// The LTX files.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// List header and trailer fields of LTX files in a table.
    List {
        /// Output tab-separated values instead of an aligned table.
        #[arg(long)]
        tsv: bool,
        /// The LTX files.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Compute the LTX checksum of a SQLite database file.
    Checksum {
        /// The database file.
        path: PathBuf,
    },
    /// Encode a SQLite database file as a snapshot LTX file.
    EncodeDb {
        /// Output path.
        #[arg(short = 'o', required = true)]
        out: PathBuf,
        /// LZ4-compress the pages.
        #[arg(short = 'c')]
        compress: bool,
        /// The database file.
        path: PathBuf,
    },
    /// Apply LTX files, in order, to a database file (created if missing).
    Apply {
        /// The database file.
        #[arg(long = "db", required = true)]
        db: PathBuf,
        /// The LTX files, oldest first.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
}

impl LtxCommand {
    /// Runs the command; `Ok` carries the exit status for commands that report per-file results.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            LtxCommand::Dump { path } => dump::run(&path).map(|()| ExitCode::SUCCESS),
            LtxCommand::Verify { paths } => verify::run(&paths),
            LtxCommand::List { tsv, paths } => list::run(&paths, tsv),
            LtxCommand::Checksum { path } => checksum::run(&path).map(|()| ExitCode::SUCCESS),
            LtxCommand::EncodeDb { out, compress, path } => {
                encode_db::run(&path, &out, compress).map(|()| ExitCode::SUCCESS)
            }
            LtxCommand::Apply { db, paths } => apply::run(&db, &paths).map(|()| ExitCode::SUCCESS),
        }
    }
}
