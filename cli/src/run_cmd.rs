//! `replite run`: LiteFS's `litefs run`. Runs a command with a guarantee from the local node:
//! `-promote` makes the node primary first, `-if-candidate` runs it only on a node that may
//! become primary, and `-with-halt-lock-on DB` lets it write DB on a replica by holding a halt
//! lock on the primary for as long as it runs (`replite::halt`). The command's exit code is
//! returned.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long `-promote` waits for the node to become primary.
const PROMOTE_WAIT: Duration = Duration::from_secs(30);

/// `replite run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The local node's API URL.
    #[arg(long, default_value = "http://127.0.0.1:20202")]
    url: String,
    /// Make the node primary (by a handoff) before running the command.
    #[arg(long)]
    promote: bool,
    /// Run the command only if the node is a candidate for primary; otherwise exit 0.
    #[arg(long = "if-candidate")]
    if_candidate: bool,
    /// Full path of a database in the mount: hold a halt lock on it at the primary while the
    /// command runs, so that it may write the database on this replica.
    #[arg(long = "with-halt-lock-on")]
    with_halt_lock_on: Option<std::path::PathBuf>,
    /// Log what is done.
    #[arg(short = 'v')]
    verbose: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    if args.promote && args.with_halt_lock_on.is_some() {
        bail!("cannot specify both -promote and -with-halt-lock-on");
    }
    let base = args.url.trim_end_matches('/').to_owned();
    let say = |what: &str| {
        if args.verbose {
            let _ = writeln!(std::io::stderr(), "{what}");
        }
    };
    if args.if_candidate || args.promote {
        let info = replite::api::get_info(&base).await.context("fetching node metadata")?;
        if args.if_candidate && !info.candidate {
            eprintln!("node is not a candidate, skipping execution");
            return Ok(ExitCode::SUCCESS);
        }
        if args.promote && info.role != "primary" {
            say("promoting node to primary");
            promote(&base).await?;
            say("promotion successful");
        }
    }
    let held = match &args.with_halt_lock_on {
        Some(path) => Some(hold_halt_lock(&base, path, &say).await?),
        None => None,
    };
    let code = replite::daemon::run_command(args.command.clone()).await.context("running the command")?;
    if let Some(held) = held {
        held.release(&say).await?;
    }
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// Asks the node to become primary and waits until it is.
async fn promote(base: &str) -> anyhow::Result<()> {
    replite::api::post(&format!("{base}/promote")).await.context("promote")?;
    let deadline = Instant::now() + PROMOTE_WAIT;
    loop {
        let info = replite::api::get_info(base).await.context("fetching node metadata")?;
        if info.role == "primary" {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("the node did not become primary within {PROMOTE_WAIT:?} (it is {})", info.role);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A halt lock the node holds for this command: released explicitly at the end, and by the
/// node anyway once this connection closes.
struct Held {
    base: String,
    name: String,
    id: Option<i64>,
    /// Kept open while the command runs.
    _connection: reqwest::Response,
}

async fn hold_halt_lock(base: &str, path: &std::path::Path, say: &impl Fn(&str)) -> anyhow::Result<Held> {
    if !path.exists() {
        bail!("database does not exist: {}", path.display());
    }
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} names no database", path.display()))?
        .to_owned();
    say("acquiring halt lock");
    let started = Instant::now();
    let url = reqwest::Url::parse_with_params(&format!("{base}/local-halt"), [("name", &name)])?;
    let mut response = reqwest::Client::new().post(url).send().await.context("asking the node for a halt lock")?;
    if !response.status().is_success() {
        let status = response.status();
        bail!("halt lock on {name} refused ({status}): {}", response.text().await.unwrap_or_default().trim());
    }
    let mut line = Vec::new();
    while !line.contains(&b'\n') {
        let chunk = response.chunk().await?.context("the node closed the connection before answering")?;
        line.extend_from_slice(&chunk);
    }
    let end = line.iter().position(|&b| b == b'\n').unwrap_or(line.len());
    let answer: serde_json::Value = serde_json::from_slice(&line[..end]).context("the node's answer")?;
    let id = answer["id"].as_i64();
    match id {
        Some(_) => say(&format!("halt lock acquired in {:?}", started.elapsed())),
        None => say("node is the primary: no halt lock needed"),
    }
    Ok(Held { base: base.to_owned(), name, id, _connection: response })
}

impl Held {
    async fn release(self, say: &impl Fn(&str)) -> anyhow::Result<()> {
        let Some(id) = self.id else { return Ok(()) };
        say("releasing halt lock");
        let url = reqwest::Url::parse_with_params(
            &format!("{}/local-halt", self.base),
            [("name", self.name.as_str()), ("id", &id.to_string())],
        )?;
        let response = reqwest::Client::new().delete(url).send().await.context("releasing the halt lock")?;
        if !response.status().is_success() {
            bail!("releasing the halt lock: {}", response.status());
        }
        say("halt lock released");
        Ok(())
    }
}
