//! Running the application under the daemon, as `litefs mount -- CMD` and `exec:` do: every
//! command but the last runs to completion first (migrations, with `if-candidate` on nodes
//! that may become primary only); the last is supervised: SIGINT and SIGTERM are forwarded
//! to it, and its exit status becomes the daemon's.

use std::process::ExitCode;

use tokio::process::Command;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing::{info, warn};

use crate::config::Config;

/// One command to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecStep {
    /// Program and arguments.
    pub argv: Vec<String>,
}

/// The commands to run: the one after `--` if given, else the config's `exec:` entries this
/// node qualifies for.
pub fn commands(config: &Config, command: &[String]) -> Vec<ExecStep> {
    if !command.is_empty() {
        return vec![ExecStep { argv: command.to_vec() }];
    }
    config
        .exec
        .0
        .iter()
        .filter(|c| !c.if_candidate || config.lease.candidate)
        .filter_map(|c| match split_command(&c.cmd) {
            Ok(argv) if !argv.is_empty() => Some(ExecStep { argv }),
            Ok(_) => None,
            Err(e) => {
                warn!(cmd = %c.cmd, error = %e, "exec command cannot be split into words; skipped");
                None
            }
        })
        .collect()
}

/// Splits a command line the way a POSIX shell splits words (quotes, escapes), without
/// running a shell.
pub fn split_command(cmd: &str) -> Result<Vec<String>, shell_words::ParseError> {
    shell_words::split(cmd)
}

/// SIGINT and SIGTERM, the signals the daemon forwards and stops on.
pub struct Signals {
    int: Signal,
    term: Signal,
}

impl Signals {
    /// Installs the handlers.
    pub fn new() -> std::io::Result<Signals> {
        Ok(Signals { int: signal(SignalKind::interrupt())?, term: signal(SignalKind::terminate())? })
    }

    /// The next signal's number.
    pub async fn next(&mut self) -> i32 {
        tokio::select! {
            _ = self.int.recv() => libc::SIGINT,
            _ = self.term.recv() => libc::SIGTERM,
        }
    }
}

/// Runs `steps` in order; returns the last one's exit code, or the first failing one's. With
/// no steps, waits for a signal and returns success.
pub async fn run_all(steps: Vec<ExecStep>, signals: &mut Signals) -> ExitCode {
    if steps.is_empty() {
        let signal = signals.next().await;
        info!(signal, "signal received; shutting down");
        return ExitCode::SUCCESS;
    }
    let last = steps.len() - 1;
    for (i, step) in steps.into_iter().enumerate() {
        let code = run_one(&step, signals).await;
        if i == last || code != 0 {
            if code != 0 && i != last {
                warn!(cmd = ?step.argv, code, "a pre-start command failed; not starting the rest");
            }
            return ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(1));
        }
    }
    ExitCode::SUCCESS
}

/// Runs `argv` to its end, SIGINT and SIGTERM forwarded to it; its exit code as a shell
/// gives it (127 if it could not start).
pub async fn run_command(argv: Vec<String>) -> std::io::Result<i32> {
    let mut signals = Signals::new()?;
    Ok(run_one(&ExecStep { argv }, &mut signals).await)
}

async fn run_one(step: &ExecStep, signals: &mut Signals) -> i32 {
    let Some((program, args)) = step.argv.split_first() else { return 0 };
    info!(cmd = ?step.argv, "starting");
    let mut command = Command::new(program);
    command.args(args);
    crate::fd_limit::restore_for_child(&mut command);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            warn!(cmd = ?step.argv, error = %e, "cannot start the command");
            return 127;
        }
    };
    loop {
        tokio::select! {
            status = child.wait() => {
                return match status {
                    Ok(status) => {
                        let code = exit_code_of(status);
                        info!(cmd = ?step.argv, code, "command exited");
                        code
                    }
                    Err(e) => {
                        warn!(cmd = ?step.argv, error = %e, "waiting for the command failed");
                        1
                    }
                };
            }
            signal = signals.next() => {
                if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
                    info!(signal, pid, "forwarding signal to the command");
                    // SAFETY: kill has no memory preconditions; the pid is our own child's.
                    unsafe { libc::kill(pid, signal) };
                }
            }
        }
    }
}

/// A shell's idea of an exit status: the code, or 128 + the signal that ended the process.
#[must_use]
pub fn exit_code_of(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_split_like_a_shell_and_if_candidate_needs_a_candidate() {
        assert_eq!(split_command("app -x 'two words'").expect("splits"), ["app", "-x", "two words"]);
        let yaml = "lease:\n  type: static\n  candidate: false\nexec:\n  - cmd: migrate up\n    if-candidate: true\n  - cmd: serve --port 8080\n";
        let config = Config::parse(yaml, "t.yml", &|_| None).expect("parses");
        let steps = commands(&config, &[]);
        assert_eq!(steps, vec![ExecStep { argv: vec!["serve".into(), "--port".into(), "8080".into()] }]);
        let given = commands(&config, &["echo".into(), "hi".into()]);
        assert_eq!(given, vec![ExecStep { argv: vec!["echo".into(), "hi".into()] }]);
    }

    #[tokio::test]
    async fn the_last_commands_exit_code_is_returned_and_a_failed_pre_start_stops_the_rest() {
        let mut signals = Signals::new().expect("signals");
        let steps = |cmds: &[&str]| cmds.iter().map(|c| ExecStep { argv: split_command(c).expect("splits") }).collect();
        assert_eq!(run_all(steps(&["true", "sh -c 'exit 7'"]), &mut signals).await, ExitCode::from(7));
        assert_eq!(run_all(steps(&["sh -c 'exit 3'", "true"]), &mut signals).await, ExitCode::from(3));
    }
}
