//! LiteFS and the `ltx` tool parse flags with Go's `flag` package, which accepts multi-letter
//! flags after a single dash (`-db PATH`, `-config FILE`). replite accepts the same spellings so
//! existing scripts keep working, by rewriting them to clap's `--long` form before parsing.

use std::ffi::OsString;

/// Multi-letter flags LiteFS users write with one dash.
const GO_STYLE_LONG_FLAGS: &[&str] =
    &["db", "tsv", "config", "json", "name", "url", "promote", "if-candidate", "with-halt-lock-on"];

/// Rewrites `-db` / `-db=x` to `--db` / `--db=x` for the flags above, up to a bare `--`.
pub fn normalize(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut passthrough = false;
    for arg in args {
        if passthrough {
            out.push(arg);
            continue;
        }
        if arg == "--" {
            passthrough = true;
            out.push(arg);
            continue;
        }
        let rewritten = arg.to_str().and_then(|s| {
            let rest = s.strip_prefix('-').filter(|r| !r.starts_with('-'))?;
            let name = rest.split('=').next().unwrap_or(rest);
            GO_STYLE_LONG_FLAGS.contains(&name).then(|| OsString::from(format!("--{rest}")))
        });
        out.push(rewritten.unwrap_or(arg));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Vec<String> {
        normalize(args.iter().map(OsString::from)).into_iter().map(|a| a.into_string().expect("utf-8")).collect()
    }

    #[test]
    fn go_style_flags_become_long_flags() {
        assert_eq!(
            run(&["replite", "ltx", "apply", "-db", "x.db", "a.ltx"]),
            ["replite", "ltx", "apply", "--db", "x.db", "a.ltx"]
        );
        assert_eq!(run(&["replite", "-config=/etc/x.yml"]), ["replite", "--config=/etc/x.yml"]);
        assert_eq!(
            run(&["replite", "import", "-url", "http://h:20202", "-name", "app.db", "app.db"]),
            ["replite", "import", "--url", "http://h:20202", "--name", "app.db", "app.db"]
        );
    }

    #[test]
    fn short_flags_and_arguments_after_double_dash_are_untouched() {
        assert_eq!(
            run(&["replite", "ltx", "encode-db", "-o", "out", "-c"]),
            ["replite", "ltx", "encode-db", "-o", "out", "-c"]
        );
        assert_eq!(run(&["replite", "mount", "--", "app", "-db"]), ["replite", "mount", "--", "app", "-db"]);
    }
}
