//! A temporary folder per test, removed when dropped.

use std::path::{Path, PathBuf};

/// A fresh folder under the system's temp dir, unique per process and call.
pub struct Scratch(PathBuf);

impl Scratch {
    /// A new empty folder whose name contains `name` (for finding leftovers).
    pub fn new(name: &str) -> Scratch {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("reformc-{}-{n}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    /// The folder itself.
    pub fn dir(&self) -> &Path {
        &self.0
    }

    /// The path of `f` inside the folder.
    pub fn path(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }

    /// Writes `bytes` to `f` inside the folder and returns its path.
    pub fn write(&self, f: &str, bytes: &[u8]) -> PathBuf {
        let p = self.path(f);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
