//! Where the runtime archive that artifacts link comes from.
//!
//! Executables, shared libraries, static archives and `--emit obj` all need
//! `libreformc_exe_runtime.a` (the kernels, model loading, the command line).
//! A program may carry that archive inside itself ([`embed`]: the `reformc`
//! binary's build script does so in release builds, which makes `cargo
//! install` give a binary that works from any directory); the linker needs a
//! file, so an embedded archive is written once to a per-user cache and
//! reused. Without one, the archive is searched beside the running program
//! and in the build tree this crate was compiled in.

use crate::error::{BackendError, Result};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// File name of the runtime archive.
pub const ARCHIVE_NAME: &str = "libreformc_exe_runtime.a";

/// Environment variable naming an archive to use instead of any other.
pub const ENV_OVERRIDE: &str = "REFORMC_RUNTIME_LIB";

/// A runtime archive compiled into the running program.
///
/// ```
/// use reformc_backend_llvm::runtime_lib::EmbeddedRuntime;
/// static BYTES: &[u8] = b"!<arch>\n";
/// let rt = EmbeddedRuntime { bytes: BYTES, hash: "0123456789abcdef" };
/// assert_eq!(rt.file_name(), "libreformc_exe_runtime-0123456789abcdef.a");
/// ```
#[derive(Clone, Copy, Debug)]
pub struct EmbeddedRuntime {
    /// The archive's contents.
    pub bytes: &'static [u8],
    /// A digest of `bytes` (hex), which names the cached copy so that
    /// binaries of different builds never share one.
    pub hash: &'static str,
}

impl EmbeddedRuntime {
    /// The cached copy's file name.
    pub fn file_name(&self) -> String {
        format!("libreformc_exe_runtime-{}.a", self.hash)
    }
}

static EMBEDDED: OnceLock<EmbeddedRuntime> = OnceLock::new();

/// Makes `rt` the archive [`find`] returns (unless [`ENV_OVERRIDE`] is set).
/// The first registration wins; returns whether this one did.
pub fn embed(rt: EmbeddedRuntime) -> bool {
    EMBEDDED.set(rt).is_ok()
}

/// Where [`find`] takes the archive from, without writing anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuntimeSource {
    /// The file [`ENV_OVERRIDE`] names.
    Env(PathBuf),
    /// Embedded in the running program (size in bytes, digest).
    Embedded(usize, &'static str),
    /// Found on disk beside the program or in the build tree.
    Found(PathBuf),
}

impl std::fmt::Display for RuntimeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RuntimeSource::Env(p) => write!(f, "{} (from ${ENV_OVERRIDE})", p.display()),
            RuntimeSource::Embedded(n, h) => {
                write!(f, "embedded ({:.1} MiB, {h})", *n as f64 / 1048576.0)
            }
            RuntimeSource::Found(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Says where the archive would come from, without writing anything.
pub fn source() -> Result<RuntimeSource> {
    if let Some(p) = env_override()? {
        return Ok(RuntimeSource::Env(p));
    }
    if let Some(rt) = EMBEDDED.get() {
        return Ok(RuntimeSource::Embedded(rt.bytes.len(), rt.hash));
    }
    search(&search_dirs()).map(RuntimeSource::Found)
}

/// The archive to link: [`ENV_OVERRIDE`], else the embedded one (written
/// to the cache on first use), else one found beside the program or in the
/// build tree.
pub fn find() -> Result<PathBuf> {
    if let Some(p) = env_override()? {
        return Ok(p);
    }
    if let Some(rt) = EMBEDDED.get() {
        return materialize(rt, &cache_dirs());
    }
    search(&search_dirs())
}

fn env_override() -> Result<Option<PathBuf>> {
    let Some(p) = std::env::var_os(ENV_OVERRIDE).map(PathBuf::from) else {
        return Ok(None);
    };
    if !p.is_file() {
        return Err(BackendError::Io(format!(
            "{ENV_OVERRIDE}={} is not a file (unset it to use the runtime reformc carries or finds)",
            p.display()
        )));
    }
    Ok(Some(p))
}

/// Writes `rt` into the first usable directory of `dirs` (or reuses an
/// identical copy there) and returns its path.
pub fn materialize(rt: &EmbeddedRuntime, dirs: &[PathBuf]) -> Result<PathBuf> {
    let mut tried = Vec::new();
    for dir in dirs {
        match materialize_in(rt, dir) {
            Ok(p) => return Ok(p),
            Err(e) => tried.push(format!("{}: {e}", dir.display())),
        }
    }
    Err(BackendError::Io(format!(
        "cannot write the embedded runtime archive ({}); set XDG_CACHE_HOME to a writable directory, or {ENV_OVERRIDE} to an archive",
        tried.join("; ")
    )))
}

fn materialize_in(rt: &EmbeddedRuntime, dir: &Path) -> std::io::Result<PathBuf> {
    private_dir(dir)?;
    let path = dir.join(rt.file_name());
    // A copy left by an interrupted or foreign writer is replaced, not trusted
    // (its size is checked first, so a stale copy is not read whole).
    let same_size = path
        .metadata()
        .is_ok_and(|m| m.len() == rt.bytes.len() as u64);
    if same_size && std::fs::read(&path).is_ok_and(|b| b == rt.bytes) {
        return Ok(path);
    }
    let tmp = dir.join(format!("{}.tmp-{}", rt.file_name(), std::process::id()));
    std::fs::write(&tmp, rt.bytes)?;
    std::fs::rename(&tmp, &path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })?;
    Ok(path)
}

/// Creates `dir` readable by its owner only, and refuses one owned by
/// another user: the archive it holds is linked into programs.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let me = std::fs::metadata("/proc/self").map(|m| m.uid());
    let owner = std::fs::metadata(dir)?.uid();
    match me {
        Ok(uid) if uid != owner => Err(std::io::Error::other(format!(
            "owned by uid {owner}, not by this user (uid {uid})"
        ))),
        _ => Ok(()),
    }
}

/// The per-user cache (`$XDG_CACHE_HOME/reformc`, `~/.cache/reformc`), then
/// a private directory under the system's temporary directory.
fn cache_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let xdg = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty());
    if let Some(x) = xdg {
        dirs.push(PathBuf::from(x).join("reformc"));
    } else if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        dirs.push(PathBuf::from(home).join(".cache/reformc"));
    }
    let user = std::env::var("USER").unwrap_or_else(|_| "user".into());
    dirs.push(std::env::temp_dir().join(format!("reformc-{user}")));
    dirs
}

/// Beside the running executable (and its `deps/`, where cargo puts the
/// static library of a dependency; `../lib/reformc` for an installed
/// layout), then the build tree this crate was compiled in.
fn search_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    let exe = std::env::current_exe().ok();
    if let Some(d) = exe.as_deref().and_then(Path::parent) {
        dirs.push(d.to_path_buf());
        dirs.extend(d.parent().map(Path::to_path_buf));
        dirs.push(d.join("../lib/reformc"));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target");
    dirs.extend(["release", "debug"].map(|p| root.join(p)));
    dirs
}

/// The newest archive of the first directory of `dirs` that has any:
/// cargo leaves one static library per build configuration in `deps/`.
fn search(dirs: &[PathBuf]) -> Result<PathBuf> {
    for d in dirs {
        let mut found: Vec<PathBuf> = Vec::new();
        let direct = d.join(ARCHIVE_NAME);
        if direct.is_file() {
            found.push(direct);
        }
        for sub in [d.clone(), d.join("deps")] {
            found.extend(newest_matching(&sub, "libreformc_exe_runtime-", ".a"));
        }
        if let Some(p) = newest(found) {
            return Ok(p);
        }
    }
    Err(BackendError::Io(format!(
        "cannot find the runtime library {ARCHIVE_NAME} (looked in {}); build it with `cargo build -p reformc-exe-runtime`, install reformc with `cargo install --path .` (which embeds it), or set {ENV_OVERRIDE}",
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

fn newest(paths: Vec<PathBuf>) -> Option<PathBuf> {
    paths
        .into_iter()
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .max_by_key(|(t, _)| *t)
        .map(|(_, p)| p)
}

fn newest_matching(dir: &Path, prefix: &str, suffix: &str) -> Option<PathBuf> {
    let names = std::fs::read_dir(dir).ok()?.flatten().map(|e| e.path());
    newest(
        names
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix) && n.ends_with(suffix))
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    static FAKE: EmbeddedRuntime = EmbeddedRuntime {
        bytes: b"!<arch>\nnot a real archive",
        hash: "00000000deadbeef",
    };

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("rc-rtlib-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn materialize_writes_once_and_reuses() {
        let d = scratch("reuse");
        let p = materialize(&FAKE, std::slice::from_ref(&d)).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), FAKE.bytes);
        assert_eq!(p.file_name().unwrap(), FAKE.file_name().as_str());
        let t0 = p.metadata().unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let again = materialize(&FAKE, std::slice::from_ref(&d)).unwrap();
        assert_eq!(again, p);
        assert_eq!(
            again.metadata().unwrap().modified().unwrap(),
            t0,
            "rewritten"
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(d.metadata().unwrap().permissions().mode() & 0o777, 0o700);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn materialize_replaces_a_damaged_copy() {
        let d = scratch("damaged");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(FAKE.file_name()), b"!<arch>\ntruncat").unwrap();
        let p = materialize(&FAKE, std::slice::from_ref(&d)).unwrap();
        assert_eq!(std::fs::read(p).unwrap(), FAKE.bytes);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn materialize_falls_back_and_names_every_failure() {
        let d = scratch("fallback");
        std::fs::create_dir_all(&d).unwrap();
        let blocked = d.join("a-file");
        std::fs::write(&blocked, b"x").unwrap();
        let ok = d.join("cache");
        let p = materialize(&FAKE, &[blocked.join("sub"), ok.clone()]).unwrap();
        assert!(p.starts_with(&ok));
        let err = materialize(&FAKE, &[blocked.join("sub")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("a-file/sub") && err.contains("XDG_CACHE_HOME"),
            "{err}"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn search_prefers_the_newest_in_the_first_directory_that_has_one() {
        let d = scratch("search");
        let (a, b) = (d.join("a"), d.join("b"));
        std::fs::create_dir_all(a.join("deps")).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(b.join(ARCHIVE_NAME), b"b").unwrap();
        let err = search(std::slice::from_ref(&a)).unwrap_err().to_string();
        assert!(err.contains("cargo install --path ."), "{err}");
        std::fs::write(a.join("deps/libreformc_exe_runtime-1.a"), b"old").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(a.join("deps/libreformc_exe_runtime-2.a"), b"new").unwrap();
        let p = search(&[a.clone(), b]).unwrap();
        assert_eq!(p, a.join("deps/libreformc_exe_runtime-2.a"));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
