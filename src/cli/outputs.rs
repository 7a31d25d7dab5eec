//! Output checks every command makes before any expensive work: the output's
//! directory exists and accepts files, and no output is one of the inputs.

use super::error::{CliError, CliResult};
use reformc_ir::outfile;
use std::path::Path;

/// The inputs of a command: (flag, path), the flag as the user wrote it
/// (`the config` for the positional argument).
pub type Inputs<'a> = Vec<(&'a str, &'a Path)>;

/// Refuses output `flag` `out` when its directory is missing or unwritable,
/// or when it is the same file as any of `inputs`.
pub fn guard(flag: &str, out: &Path, inputs: &Inputs<'_>) -> CliResult<()> {
    outfile::check_dir(flag, out).map_err(CliError::input)?;
    match outfile::first_clash(flag, out, inputs.iter().copied()) {
        Some(m) => Err(CliError::input(m)),
        None => Ok(()),
    }
}

/// Creates `--dump-dir` now (a failure is the user's) and refuses it when
/// a dump file it may overwrite (`NN-name.ir`) is one of `inputs`.
pub fn guard_dump_dir(dir: &Path, inputs: &Inputs<'_>) -> CliResult<()> {
    let fail = |what: String| CliError::input(format!("--dump-dir `{}`: {what}", dir.display()));
    if dir.exists() && !dir.is_dir() {
        return Err(fail("exists and is not a directory".into()));
    }
    std::fs::create_dir_all(dir).map_err(|e| fail(format!("cannot create the directory: {e}")))?;
    outfile::check_writable(dir)
        .map_err(|e| fail(format!("cannot create files in the directory: {e}")))?;
    let entries =
        std::fs::read_dir(dir).map_err(|e| fail(format!("cannot list the directory: {e}")))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !is_dump_name(&name) {
            continue;
        }
        if let Some(m) = outfile::first_clash("--dump-dir", &entry.path(), inputs.iter().copied()) {
            return Err(CliError::input(m));
        }
    }
    Ok(())
}

/// Names the pass manager writes: `00-input.ir`, `03-fuse.ir`, `04-x.invalid.ir`.
fn is_dump_name(name: &str) -> bool {
    let digits = name.bytes().take_while(u8::is_ascii_digit).count();
    digits >= 2 && name[digits..].starts_with('-') && name.ends_with(".ir")
}

#[cfg(test)]
mod tests {
    use super::is_dump_name;

    #[test]
    fn dump_names() {
        assert!(is_dump_name("00-input.ir"));
        assert!(is_dump_name("12-fuse-chunks.invalid.ir"));
        assert!(!is_dump_name("config.json"));
        assert!(!is_dump_name("1-x.ir"));
    }
}
