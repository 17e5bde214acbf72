//! `replite import` and `replite export`, LiteFS's commands of the same names and flags
//! (`-name`, `-url`): move a whole SQLite database into or out of a cluster through a node's
//! `/import` and `/export`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::node_cmd::NodeArgs;

/// How often progress is printed: often enough to see a transfer move, rarely enough not to
/// flood a log. Transfers shorter than this print none.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// SQLite's side files of a database; a stale one beside a new database would be applied to
/// it (a hot journal rolled back, a WAL replayed) and corrupt it.
const SIDE_FILE_SUFFIXES: [&str; 3] = ["-journal", "-wal", "-shm"];

/// `replite import` and `replite export`.
#[derive(Debug, clap::Args)]
pub struct TransferArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// The database's name in the cluster (its file name in the mount).
    #[arg(long)]
    name: String,
    /// The local SQLite database file.
    file: PathBuf,
}

/// `replite import`: uploads FILE; the node creates or replaces database NAME with it in one
/// transaction, which replicates like any other.
pub async fn import(args: TransferArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let file = tokio::fs::File::open(&args.file).await.with_context(|| format!("opening {}", args.file.display()))?;
    let meta = file.metadata().await.with_context(|| format!("reading {}", args.file.display()))?;
    anyhow::ensure!(meta.is_file(), "{} is not a file", args.file.display());
    let progress = Arc::new(Mutex::new(Progress::new("import", &args.name)));
    let shared = Arc::clone(&progress);
    let report = move |sent: u64, total: Option<u64>| {
        let mut p = shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        p.update(sent, total);
        if Some(sent) == total {
            p.note("sent; the node is checking the database and applying it");
        }
    };
    let answer = replite::api::import_database(&args.node.url, &args.name, file, meta.len(), report).await;
    progress.lock().unwrap_or_else(std::sync::PoisonError::into_inner).finish();
    let imported = answer.context("import")?;
    let position = imported.position.map_or_else(String::new, |p| format!(", now at {p}"));
    println!(
        "Import of database {:?} ({}) in {:.2?}{position}",
        imported.name,
        human_bytes(imported.bytes),
        started.elapsed()
    );
    Ok(ExitCode::SUCCESS)
}

/// `replite export`: downloads a consistent copy of database NAME and puts it at FILE
/// atomically (a temporary file beside it, synced, then renamed over it).
pub async fn export(args: TransferArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let dir = match args.file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let base = args.file.file_name().with_context(|| format!("{} names no file", args.file.display()))?;
    let staged = tempfile::Builder::new()
        .prefix(&format!(".{}.", base.to_string_lossy()))
        .suffix(".tmp")
        .tempfile_in(&dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let mut out = tokio::fs::File::from_std(staged.reopen().context("opening the temporary file")?);
    let mut progress = Progress::new("export", &args.name);
    let bytes = replite::api::export_database(&args.node.url, &args.name, &mut out, |done, total| {
        progress.update(done, total);
    })
    .await;
    progress.finish();
    let bytes = bytes.context("export")?;
    out.sync_all().await.with_context(|| format!("syncing {}", staged.path().display()))?;
    drop(out);
    remove_side_files(&args.file)?;
    staged.persist(&args.file).with_context(|| format!("renaming the download to {}", args.file.display()))?;
    sync_dir(&dir)?;
    println!(
        "Export of database {:?} ({}) to {} in {:.2?}",
        args.name,
        human_bytes(bytes),
        args.file.display(),
        started.elapsed()
    );
    Ok(ExitCode::SUCCESS)
}

fn remove_side_files(db: &Path) -> anyhow::Result<()> {
    for suffix in SIDE_FILE_SUFFIXES {
        let mut side = db.as_os_str().to_owned();
        side.push(suffix);
        match std::fs::remove_file(&side) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", Path::new(&side).display())),
        }
    }
    Ok(())
}

/// Makes a rename in `dir` durable.
fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", dir.display()))
}

/// Progress of one transfer on stderr: a line per [`PROGRESS_INTERVAL`], rewritten in place
/// on a terminal.
struct Progress {
    what: String,
    last: Instant,
    shown: bool,
    terminal: bool,
}

impl Progress {
    fn new(verb: &str, name: &str) -> Progress {
        Progress {
            what: format!("{verb} {name}"),
            last: Instant::now(),
            shown: false,
            terminal: std::io::stderr().is_terminal(),
        }
    }

    fn update(&mut self, done: u64, total: Option<u64>) {
        if self.last.elapsed() < PROGRESS_INTERVAL {
            return;
        }
        self.last = Instant::now();
        self.print(&progress_line(&self.what, done, total));
    }

    /// A remark once the transfer has shown progress (short transfers stay quiet).
    fn note(&mut self, text: &str) {
        if self.shown {
            let line = format!("{}: {text}", self.what);
            self.print(&line);
        }
    }

    fn print(&mut self, line: &str) {
        self.shown = true;
        if self.terminal {
            eprint!("\r{line}\x1b[K");
        } else {
            eprintln!("{line}");
        }
    }

    /// Ends the in-place line, if any.
    fn finish(&mut self) {
        if self.shown && self.terminal {
            eprintln!();
        }
        self.shown = false;
    }
}

fn progress_line(what: &str, done: u64, total: Option<u64>) -> String {
    match total {
        Some(total) if total > 0 => {
            let percent = done.saturating_mul(100) / total;
            format!("{what}: {} of {} ({percent}%)", human_bytes(done), human_bytes(total))
        }
        _ => format!("{what}: {}", human_bytes(done)),
    }
}

/// `bytes` in the largest binary unit that keeps the number at least 1, one decimal.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    #[allow(clippy::cast_precision_loss, reason = "one decimal is shown")]
    let mut value = bytes as f64 / 1024.0;
    let mut unit = UNITS[0];
    for next in &UNITS[1..] {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = next;
    }
    format!("{value:.1} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_read_in_binary_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 << 30), "5.0 GiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn progress_shows_the_share_done_when_the_total_is_known() {
        assert_eq!(progress_line("export app.db", 1 << 20, Some(4 << 20)), "export app.db: 1.0 MiB of 4.0 MiB (25%)");
        assert_eq!(progress_line("export app.db", 1 << 20, None), "export app.db: 1.0 MiB");
    }
}
