//! Replays the committed fuzz corpus and every past fuzz finding (`fuzz/regressions/`) through
//! the fuzz targets' bodies, so `cargo test` keeps them fixed without a fuzzer installed.

use std::fs;
use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut count = 0;
    for dir in [fuzz.join("corpus").join(target), fuzz.join("regressions").join(target)] {
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for entry in entries {
            let path = entry.expect("corpus entry").path();
            if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
                continue;
            }
            let data = fs::read(&path).expect("corpus file readable");
            run(&data);
            count += 1;
        }
    }
    count
}

#[test]
fn ltx_decode_corpus_replays_cleanly() {
    let n = replay("ltx_decode", replite_core::fuzzing::ltx_decode);
    assert!(n >= 6, "expected the committed seed corpus, replayed {n} inputs");
}

#[test]
fn ltx_roundtrip_corpus_replays_cleanly() {
    let n = replay("ltx_roundtrip", replite_core::fuzzing::ltx_roundtrip);
    assert!(n >= 4, "expected the committed seed corpus, replayed {n} inputs");
}
