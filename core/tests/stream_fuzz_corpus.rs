//! Replays the committed stream-codec corpus (and any findings in `fuzz/regressions/`)
//! through the fuzz target's body, so `cargo test` keeps them fixed without a fuzzer.

use std::fs;
use std::path::Path;

#[test]
fn stream_decode_corpus_replays_cleanly() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut count = 0;
    for dir in [fuzz.join("corpus/stream_decode"), fuzz.join("regressions/stream_decode")] {
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for entry in entries {
            let path = entry.expect("corpus entry").path();
            if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
                continue;
            }
            replite_core::stream::fuzz::stream_decode(&fs::read(&path).expect("corpus file readable"));
            count += 1;
        }
    }
    assert!(count >= 15, "expected the committed seed corpus, replayed {count} inputs");
}

#[test]
fn stream_decode_survives_deterministic_mutations_of_the_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/stream_decode");
    let mut state = 0x9e37_79b9_u64;
    let mut runs = 0;
    for entry in fs::read_dir(&dir).expect("corpus directory") {
        let seed = fs::read(entry.expect("corpus entry").path()).expect("corpus file readable");
        for _ in 0..300 {
            let mut data = seed.clone();
            for _ in 0..3 {
                state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                let i = (state >> 33) as usize % data.len();
                data[i] = (state >> 11) as u8;
            }
            replite_core::stream::fuzz::stream_decode(&data);
            runs += 1;
        }
    }
    assert!(runs >= 4_500);
}
