//! `ltx verify`: every rule and checksum of each file; exit status 1 if any is invalid.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::process::ExitCode;

use replite_core::ltx;

pub fn run(paths: &[impl AsRef<Path>]) -> anyhow::Result<ExitCode> {
    let (mut ok, mut invalid) = (0, 0);
    for path in paths {
        let path = path.as_ref();
        match verify_file(path) {
            Ok(()) => ok += 1,
            Err(e) => {
                invalid += 1;
                println!("{}: {e:#}", path.display());
            }
        }
    }
    if invalid != 0 {
        println!("{ok} ok, {invalid} invalid");
        return Ok(ExitCode::FAILURE);
    }
    println!("ok");
    Ok(ExitCode::SUCCESS)
}

fn verify_file(path: &Path) -> anyhow::Result<()> {
    let file = File::open(path)?;
    ltx::verify(BufReader::new(file))?;
    Ok(())
}
