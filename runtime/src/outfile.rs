//! Safe output files for generated executables (std only: the runtime
//! cannot use the compiler's crates). The same rules as `reformc_ir::outfile`:
//! an output is written to a temporary file beside it and renamed into place
//! when complete, an output that is an input is refused, and the output's
//! directory is checked before the model runs.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Whether `a` and `b` name the same existing file (canonical path, or
/// device and inode for hard links). A missing path matches nothing.
pub fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    if let (Ok(ca), Ok(cb)) = (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        if ca == cb {
            return true;
        }
    }
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(ma), Ok(mb)) => ma.dev() == mb.dev() && ma.ino() == mb.ino(),
        _ => false,
    }
}

fn parent_dir(out: &Path) -> PathBuf {
    match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn temp_beside(dest: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let base = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    parent_dir(dest).join(format!(
        ".{base}.tmp.{}.{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Checks that `out` can be created: its directory exists and accepts new
/// files (probed by creating one: permission bits say nothing for root).
/// The error names the directory.
pub fn check_dir(out: &Path) -> Result<(), String> {
    match std::fs::metadata(out) {
        Ok(m) if m.is_dir() => return Err("is a directory, expected a file path".into()),
        // A device or FIFO (`/dev/null`) is written in place.
        Ok(m) if !m.is_file() => return Ok(()),
        _ => {}
    }
    let out = std::fs::canonicalize(out).unwrap_or_else(|_| out.to_path_buf());
    let dir = parent_dir(&out);
    if !dir.is_dir() {
        let what = if dir.exists() {
            "is not a directory"
        } else {
            "does not exist"
        };
        return Err(format!("the directory `{}` {what}", dir.display()));
    }
    let probe = temp_beside(&out);
    File::create(&probe)
        .and_then(|_| std::fs::remove_file(&probe))
        .map_err(|e| format!("cannot create files in `{}`: {e}", dir.display()))
}

/// Writes `dest` atomically with `fill`; on any error the temporary file is
/// removed and an existing `dest` is untouched. A symlink is followed (its
/// target replaced); a device or FIFO (`/dev/null`) is written in place.
pub fn write_atomic(
    dest: &Path,
    fill: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    let meta = std::fs::metadata(dest).ok();
    if meta.as_ref().is_some_and(|m| !m.is_file() && !m.is_dir()) {
        let mut w = BufWriter::new(File::create(dest)?);
        fill(&mut w)?;
        return w.flush();
    }
    let dest = std::fs::canonicalize(dest).unwrap_or_else(|_| dest.to_path_buf());
    let tmp = temp_beside(&dest);
    let result = write_then_rename(&tmp, &dest, meta, fill);
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn write_then_rename(
    tmp: &Path,
    dest: &Path,
    old: Option<std::fs::Metadata>,
    fill: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    let file = File::create(tmp)?;
    if let Some(m) = old {
        file.set_permissions(m.permissions())?;
    }
    let mut w = BufWriter::new(file);
    fill(&mut w)?;
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    std::fs::rename(tmp, dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_write_keeps_the_old_file_and_leaves_no_temporary() {
        let d = std::env::temp_dir().join(format!("rc_outfile_{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("out.npy");
        write_atomic(&p, |w| w.write_all(b"old")).unwrap();
        let e = write_atomic(&p, |w| {
            w.write_all(&[1u8; 70_000])?;
            Err(io::Error::other("disk full"))
        });
        assert_eq!(e.unwrap_err().to_string(), "disk full");
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1);
        let link = d.join("link.npy");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert!(same_file(&link, &p));
        assert!(check_dir(Path::new("/dev/null")).is_ok());
        assert!(check_dir(&d.join("missing/x.npy"))
            .unwrap_err()
            .contains("does not exist"));
        assert!(check_dir(&p.join("x.npy"))
            .unwrap_err()
            .contains("is not a directory"));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
