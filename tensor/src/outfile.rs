//! Safe output files, shared by every part of reformc that writes one (the
//! CLI, the pass manager's dumps and the LLVM backend's artifacts, through
//! its re-export `reformc_ir::outfile`, and generated executables, through
//! the executable runtime): std only, so that the runtime needs no compiler
//! crate.
//!
//! Three rules, so that no command loses data:
//! - an output is written to a temporary file in its own directory and
//!   renamed into place only when complete ([`AtomicOutput`], [`write_atomic`]);
//!   on failure the temporary is removed and an existing output is untouched;
//! - an output that is the same file as an input is refused ([`same_file`]);
//! - an output's directory must exist and be writable, checked up front
//!   ([`check_dir`]).

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Whether `a` and `b` name the same existing file, through symlinks
/// (canonical paths) or hard links (device and inode).
///
/// A path that does not exist is the same as nothing: a missing output
/// cannot overwrite an input.
pub fn same_file(a: &Path, b: &Path) -> bool {
    if let (Ok(ca), Ok(cb)) = (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        if ca == cb {
            return true;
        }
    }
    same_inode(a, b)
}

#[cfg(unix)]
fn same_inode(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(ma), Ok(mb)) => ma.dev() == mb.dev() && ma.ino() == mb.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_inode(_: &Path, _: &Path) -> bool {
    false
}

/// The one-line refusal when output `flag` `out` is the same file as input
/// `input_flag` `input`, or `None` when they differ.
pub fn clash(flag: &str, out: &Path, input_flag: &str, input: &Path) -> Option<String> {
    same_file(out, input).then(|| {
        format!(
            "{flag} `{}` is the same file as {input_flag} `{}`: refusing to overwrite an input",
            out.display(),
            input.display()
        )
    })
}

/// The first clash of output `flag` `out` with any of `inputs` (flag, path).
pub fn first_clash<'a>(
    flag: &str,
    out: &Path,
    inputs: impl IntoIterator<Item = (&'a str, &'a Path)>,
) -> Option<String> {
    inputs.into_iter().find_map(|(f, p)| clash(flag, out, f, p))
}

/// Checks that output `flag` `out` can be created: its directory exists, is
/// a directory and accepts new files, and `out` itself is not a directory.
/// The error is one line naming the flag and the directory. A device or
/// FIFO (`/dev/null`) is written in place and needs no directory.
pub fn check_dir(flag: &str, out: &Path) -> Result<(), String> {
    match std::fs::metadata(out) {
        Ok(m) if m.is_dir() => {
            return Err(format!(
                "{flag} `{}` is a directory, expected a file path",
                out.display()
            ))
        }
        Ok(m) if !m.is_file() => return Ok(()),
        _ => {}
    }
    let dir = parent_dir(&resolve_link(out));
    if !dir.exists() {
        return Err(format!(
            "{flag} `{}`: the directory `{}` does not exist",
            out.display(),
            dir.display()
        ));
    }
    if !dir.is_dir() {
        return Err(format!(
            "{flag} `{}`: `{}` is not a directory",
            out.display(),
            dir.display()
        ));
    }
    check_writable(&dir).map_err(|e| {
        format!(
            "{flag} `{}`: cannot create files in the directory `{}`: {e}",
            out.display(),
            dir.display()
        )
    })
}

/// Checks that files can be created in `dir` by creating (and removing) a
/// temporary one: permission bits alone say nothing for root or read-only mounts.
pub fn check_writable(dir: &Path) -> io::Result<()> {
    let probe = dir.join(temp_name("probe"));
    File::create(&probe)?;
    std::fs::remove_file(&probe)
}

/// The directory an output path lives in (`.` for a bare file name).
pub fn parent_dir(out: &Path) -> PathBuf {
    match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The file a symlink points to (itself when not a link, or dangling).
fn resolve_link(p: &Path) -> PathBuf {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.file_type().is_symlink() => {
            std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
        }
        _ => p.to_path_buf(),
    }
}

fn temp_name(base: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        ".{base}.tmp.{}.{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// An output being written: a temporary path beside the destination that a
/// writer (or a tool such as the linker) fills, renamed onto the destination
/// by [`AtomicOutput::commit`]. Dropped without a commit, the temporary is removed.
#[derive(Debug)]
pub struct AtomicOutput {
    dest: PathBuf,
    tmp: PathBuf,
    committed: bool,
}

impl AtomicOutput {
    /// Prepares an output for `dest`. A symlink destination is resolved, so
    /// the file it points to is replaced and the link kept.
    pub fn new(dest: &Path) -> AtomicOutput {
        let dest = resolve_link(dest);
        let base = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "out".into());
        let tmp = parent_dir(&dest).join(temp_name(&base));
        AtomicOutput {
            dest,
            tmp,
            committed: false,
        }
    }

    /// Where the contents go until the commit.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// The final path.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Flushes the temporary to disk and renames it onto the destination.
    pub fn commit(mut self) -> io::Result<()> {
        File::open(&self.tmp)?.sync_all()?;
        std::fs::rename(&self.tmp, &self.dest)?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for AtomicOutput {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Writes `dest` atomically with `fill`: the file appears complete or not at
/// all, and an existing `dest` keeps its permissions. A destination that
/// exists but is not a regular file (`/dev/null`, a FIFO) is written in place:
/// renaming over it would replace the device.
pub fn write_atomic(
    dest: &Path,
    fill: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    if let Ok(m) = std::fs::metadata(dest) {
        if !m.is_file() && !m.is_dir() {
            let mut w = BufWriter::new(File::create(dest)?);
            fill(&mut w)?;
            return w.flush();
        }
    }
    let out = AtomicOutput::new(dest);
    let file = File::create(out.path())?;
    if let Ok(m) = std::fs::metadata(out.dest()) {
        file.set_permissions(m.permissions())?;
    }
    let mut w = BufWriter::new(file);
    fill(&mut w)?;
    w.into_inner().map_err(|e| e.into_error())?;
    out.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("reformc-outfile-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn entries(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn write_replaces_and_failure_leaves_old_contents() {
        let d = scratch("atomic");
        let p = d.join("out.npy");
        write_atomic(&p, |w| w.write_all(b"first")).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"first");
        // A writer failing half-way: the old file stays, no temporary is left.
        let err = write_atomic(&p, |w| {
            w.write_all(&[7u8; 100_000])?;
            Err(io::Error::other("disk full"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "disk full");
        assert_eq!(std::fs::read(&p).unwrap(), b"first");
        assert_eq!(entries(&d), ["out.npy"]);
        write_atomic(&p, |w| w.write_all(b"second")).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second");
        assert_eq!(entries(&d), ["out.npy"]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn modes_symlinks_and_devices() {
        use std::os::unix::fs::PermissionsExt;
        let d = scratch("modes");
        let p = d.join("tool");
        std::fs::write(&p, b"old").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o751)).unwrap();
        write_atomic(&p, |w| w.write_all(b"new")).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o751);
        // Through a symlink: the target is replaced, the link stays a link.
        let link = d.join("link");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        write_atomic(&link, |w| w.write_all(b"via link")).unwrap();
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(&p).unwrap(), b"via link");
        write_atomic(Path::new("/dev/null"), |w| w.write_all(b"x")).unwrap();
        assert!(!std::fs::metadata("/dev/null").unwrap().is_file());
        assert_eq!(entries(&d), ["link", "tool"]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn uncommitted_output_is_removed() {
        let d = scratch("drop");
        let out = AtomicOutput::new(&d.join("a.so"));
        std::fs::write(out.path(), b"partial").unwrap();
        assert_eq!(entries(&d).len(), 1);
        drop(out);
        assert!(entries(&d).is_empty());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn same_file_sees_symlinks_and_hard_links() {
        let d = scratch("same");
        let a = d.join("a.npy");
        std::fs::write(&a, b"a").unwrap();
        let sym = d.join("sym.npy");
        std::os::unix::fs::symlink(&a, &sym).unwrap();
        let hard = d.join("hard.npy");
        std::fs::hard_link(&a, &hard).unwrap();
        let other = d.join("b.npy");
        std::fs::write(&other, b"a").unwrap();
        assert!(same_file(&a, &d.join(".").join("a.npy")));
        assert!(same_file(&sym, &a));
        assert!(same_file(&hard, &a));
        assert!(!same_file(&other, &a));
        assert!(!same_file(&d.join("missing.npy"), &a));
        let msg = clash("--output", &hard, "--input", &a).unwrap();
        assert!(msg.contains("--output") && msg.contains("--input"), "{msg}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn output_directories_are_checked() {
        let d = scratch("dirs");
        let file = d.join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(check_dir("-o", &d.join("x.npy")).is_ok());
        let e = check_dir("-o", &d.join("missing/x.npy")).unwrap_err();
        assert!(e.contains("-o") && e.contains("does not exist"), "{e}");
        let e = check_dir("-o", &file.join("x.npy")).unwrap_err();
        assert!(e.contains("is not a directory"), "{e}");
        let e = check_dir("-o", &d).unwrap_err();
        assert!(e.contains("is a directory"), "{e}");
        assert!(check_dir("-o", Path::new("/dev/null")).is_ok());
        assert_eq!(entries(&d), ["file"]);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
