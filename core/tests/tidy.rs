//! The architecture, checked: core does no I/O and never unwraps outside tests. Scans every
//! file under `core/src`, skipping `#[cfg(test)]` items (a `#[cfg(test)]` line and the
//! brace-balanced item that follows it), files named `tests.rs`, and comment lines.

use std::path::{Path, PathBuf};

/// Forbidden in non-test core code, with why.
const FORBIDDEN: &[(&str, &str)] = &[
    ("std::fs", "core does no file I/O; the caller passes readers and writers"),
    ("std::net", "core does no network I/O"),
    ("tokio", "core depends on no async runtime"),
    ("fuser", "FUSE belongs in io-fuse"),
    ("Instant::now", "core never reads the clock; `now` is passed in"),
    ("SystemTime::now", "core never reads the clock; `now` is passed in"),
    ("thread_rng", "core takes randomness from a seed"),
    (".unwrap()", "no unwrap outside tests; return a typed error or expect(\"why it cannot fail\")"),
    ("std::thread", "core runs no threads"),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The lines of `text` that are not test code or comments, with their 1-based numbers.
fn non_test_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut skipping = false;
    let mut depth: i64 = 0;
    let mut seen_brace = false;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if !skipping && trimmed.starts_with("#[cfg(test)]") {
            skipping = true;
            depth = 0;
            seen_brace = false;
            continue;
        }
        if skipping {
            for c in line.chars() {
                match c {
                    '{' => {
                        depth += 1;
                        seen_brace = true;
                    }
                    '}' => depth -= 1,
                    _ => {}
                }
            }
            // `mod tests;` (no braces) ends at its semicolon.
            if (seen_brace && depth <= 0) || (!seen_brace && trimmed.ends_with(';')) {
                skipping = false;
            }
            continue;
        }
        if trimmed.starts_with("//") {
            continue;
        }
        out.push((i + 1, line.to_owned()));
    }
    out
}

#[test]
fn core_source_does_no_io_and_never_unwraps_outside_tests() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    files.sort();
    assert!(files.len() > 10, "found only {} source files under {}", files.len(), root.display());
    let mut problems = Vec::new();
    for file in &files {
        // Unit-test files included with `#[cfg(test)] mod tests;` are test code throughout.
        if file.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
        for (number, line) in non_test_lines(&text) {
            for (needle, why) in FORBIDDEN {
                if line.contains(needle) {
                    problems.push(format!("{}:{number}: `{needle}`: {why}\n    {}", file.display(), line.trim()));
                }
            }
        }
    }
    assert!(problems.is_empty(), "tidy found {} problems:\n{}", problems.len(), problems.join("\n"));
}

#[test]
fn the_scanner_skips_test_items_but_not_the_code_after_them() {
    let text = "fn a() {}\n#[cfg(test)]\nmod tests {\n    fn b() { x.unwrap(); }\n}\nfn c() { y.unwrap(); }\n";
    let lines = non_test_lines(text);
    let numbers: Vec<usize> = lines.iter().map(|(n, _)| *n).collect();
    assert_eq!(numbers, vec![1, 6]);
    assert_eq!(non_test_lines("#[cfg(test)]\nmod tests;\nfn d() {}\n").len(), 1);
}
