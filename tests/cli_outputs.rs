//! Outputs never destroy data: an output that is an input (same path, a
//! symlink or a hard link) is refused with exit 2 and the input untouched, a
//! missing or unusable output directory is exit 2 before any work, and a run
//! that fails leaves an existing output as it was, with no temporary behind.

use crate::common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

const CASE: &str = "tests/fixtures/causal_mixed_r2";

/// A scratch directory holding copies of the fixture's files.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("reformc-out-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for f in [
            "config.json",
            "model.safetensors",
            "input_ids.npy",
            "logits.npy",
        ] {
            std::fs::copy(common::root().join(CASE).join(f), dir.join(f)).unwrap();
        }
        Scratch(dir)
    }

    fn path(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }

    fn symlink(&self, target: &str, name: &str) -> PathBuf {
        let p = self.path(name);
        std::os::unix::fs::symlink(self.path(target), &p).unwrap();
        p
    }

    fn hard_link(&self, target: &str, name: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::hard_link(self.path(target), &p).unwrap();
        p
    }

    /// The directory's file names, sorted: temporaries would show here.
    fn entries(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `prog` with `args`; returns (exit code, stderr).
fn exec(prog: &Path, args: &[&OsStr]) -> (i32, String) {
    let out = Command::new(prog).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "panicked: {stderr}");
    (out.status.code().unwrap_or(-1), stderr)
}

fn reformc(args: &[&OsStr]) -> (i32, String) {
    exec(Path::new(env!("CARGO_BIN_EXE_reformc")), args)
}

fn os<'a>(items: &'a [&'a dyn AsRef<OsStr>]) -> Vec<&'a OsStr> {
    items.iter().map(|a| a.as_ref()).collect()
}

/// Exit 2 and one `error:` line containing every needle.
fn assert_refused(result: (i32, String), needles: &[&str]) {
    let (code, stderr) = result;
    assert_eq!(code, 2, "expected exit code 2, got {code}: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    for n in needles {
        assert!(
            lines[0].contains(n),
            "message should mention {n:?}: {stderr}"
        );
    }
}

/// `reformc run` on the scratch copies with `--output out` and `extra`.
fn run(s: &Scratch, out: &Path, extra: &[&dyn AsRef<OsStr>]) -> (i32, String) {
    let (cfg, w, ids) = (
        s.path("config.json"),
        s.path("model.safetensors"),
        s.path("input_ids.npy"),
    );
    let mut args: Vec<&dyn AsRef<OsStr>> = vec![
        &"run",
        &cfg,
        &"--weights",
        &w,
        &"--input",
        &ids,
        &"--output",
        &out,
        &"--interp",
        &"-q",
    ];
    args.extend_from_slice(extra);
    reformc(&os(&args))
}

/// Runs `check` and asserts that every scratch file kept its bytes.
fn untouched(s: &Scratch, check: impl FnOnce()) {
    let files = [
        "config.json",
        "model.safetensors",
        "input_ids.npy",
        "logits.npy",
    ];
    let before: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(s.path(f)).unwrap())
        .collect();
    check();
    for (f, b) in files.iter().zip(&before) {
        assert_eq!(&std::fs::read(s.path(f)).unwrap(), b, "{f} was modified");
    }
}

#[test]
fn run_refuses_an_output_that_is_an_input() {
    let s = Scratch::new("run");
    untouched(&s, || {
        let ids = s.path("input_ids.npy");
        assert_refused(
            run(&s, &ids, &[]),
            &["--output", "--input", "refusing to overwrite"],
        );
        let link = s.symlink("input_ids.npy", "link.npy");
        assert_refused(run(&s, &link, &[]), &["--output", "--input"]);
        let hard = s.hard_link("model.safetensors", "hard.npy");
        assert_refused(run(&s, &hard, &[]), &["--output", "--weights"]);
        assert_refused(
            run(&s, &s.path("config.json"), &[]),
            &["--output", "the config"],
        );
        let reference = s.path("logits.npy");
        assert_refused(
            run(&s, &reference, &[&"--compare", &reference]),
            &["--output", "--compare"],
        );
        let mask = s.symlink("logits.npy", "mask.npy");
        assert_refused(
            run(&s, &reference, &[&"--attention-mask", &mask]),
            &["--output", "--attention-mask"],
        );
    });
}

#[test]
fn dump_and_compile_refuse_outputs_that_are_inputs() {
    let s = Scratch::new("compile");
    untouched(&s, || {
        let (cfg, w) = (s.path("config.json"), s.path("model.safetensors"));
        let link = s.symlink("config.json", "cfg-link");
        assert_refused(
            reformc(&os(&[&"dump", &cfg, &"-o", &link])),
            &["--output", "the config"],
        );
        let hard = s.hard_link("model.safetensors", "model");
        assert_refused(
            reformc(&os(&[&"compile", &cfg, &"--weights", &w, &"-o", &hard])),
            &["--output", "--weights"],
        );
        // --emit lib also writes model.h beside the library.
        s.symlink("config.json", "model.h");
        let lib = s.path("libmodel.so");
        assert_refused(
            reformc(&os(&[
                &"compile",
                &cfg,
                &"--weights",
                &w,
                &"--emit",
                &"lib",
                &"-o",
                &lib,
            ])),
            &["header", "the config"],
        );
        // --dump-dir files are numbered `NN-name.ir`: one is the config here.
        let dumps = s.path("dumps");
        std::fs::create_dir(&dumps).unwrap();
        std::fs::hard_link(&cfg, dumps.join("00-input.ir")).unwrap();
        assert_refused(
            reformc(&os(&[&"dump", &cfg, &"--dump-dir", &dumps])),
            &["--dump-dir", "the config"],
        );
    });
}

#[test]
fn missing_or_unusable_output_directories_are_user_errors() {
    let s = Scratch::new("dirs");
    let (cfg, w) = (s.path("config.json"), s.path("model.safetensors"));
    let missing = s.path("missing/out.npy");
    assert_refused(
        run(&s, &missing, &[]),
        &["--output", "missing", "does not exist"],
    );
    // Under a regular file: root ignores permission bits, not this.
    let under_file = s.path("config.json/out.npy");
    assert_refused(
        run(&s, &under_file, &[]),
        &["--output", "is not a directory"],
    );
    let exe = s.path("missing/model");
    let (code, err) = reformc(&os(&[&"compile", &cfg, &"--weights", &w, &"-o", &exe]));
    assert!(
        !err.contains("-Wl,"),
        "the linker command line leaked: {err}"
    );
    assert_refused((code, err), &["--output", "does not exist"]);
    assert_refused(
        reformc(&os(&[&"dump", &cfg, &"-o", &s.path("missing/g.ir")])),
        &["--output", "does not exist"],
    );
    assert_refused(
        reformc(&os(&[
            &"dump",
            &cfg,
            &"--dump-dir",
            &s.path("config.json/d"),
        ])),
        &["--dump-dir"],
    );
    assert_refused(run(&s, &s.0, &[]), &["--output", "is a directory"]);
}

#[test]
fn failed_runs_leave_existing_outputs_and_no_temporaries() {
    let s = Scratch::new("atomic");
    let out = s.path("out.npy");
    std::fs::write(&out, b"previous result").unwrap();
    // Fails after the output checks passed (a token id outside the vocabulary).
    let bad = s.path("bad.npy");
    let ids = ndarray::ArrayD::<i64>::from_elem(ndarray::IxDyn(&[1, 4]), 1 << 40);
    ndarray_npy::WriteNpyExt::write_npy(&ids, std::fs::File::create(&bad).unwrap()).unwrap();
    let (cfg, w) = (s.path("config.json"), s.path("model.safetensors"));
    let (code, err) = reformc(&os(&[
        &"run",
        &cfg,
        &"--weights",
        &w,
        &"--input",
        &bad,
        &"--output",
        &out,
        &"-q",
    ]));
    assert_eq!(code, 2, "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), b"previous result");
    // A successful run replaces the file whole and leaves nothing else.
    let before = s.entries();
    let (code, err) = run(&s, &out, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(s.entries(), before);
    let got = std::fs::read(&out).unwrap();
    assert!(got.starts_with(b"\x93NUMPY"), "not an npy file");
}

#[test]
fn compiled_executable_refuses_an_output_that_is_an_input() {
    let s = Scratch::new("exe");
    let dir = common::root().join("examples/tiny-reformer");
    let exe = s.path("model");
    let (cfg, w) = (dir.join("config.json"), dir.join("model.safetensors"));
    let (code, err) = reformc(&os(&[
        &"compile",
        &cfg,
        &"--weights",
        &w,
        &"-o",
        &exe,
        &"-q",
    ]));
    assert_eq!(code, 0, "{err}");
    assert!(s.entries().contains(&"model".to_string()));
    assert!(
        !s.entries().iter().any(|e| e.contains(".tmp.")),
        "{:?}",
        s.entries()
    );
    let ids = s.path("ids.npy");
    std::fs::copy(dir.join("input_ids.npy"), &ids).unwrap();
    let bytes = std::fs::read(&ids).unwrap();
    let link = s.symlink("ids.npy", "out.npy");
    assert_refused(
        exec(&exe, &os(&[&"--input", &ids, &"--output", &link])),
        &["--output", "--input", "refusing to overwrite"],
    );
    assert_refused(
        exec(&exe, &os(&[&"--input", &ids, &"--output", &ids])),
        &["--output", "--input"],
    );
    assert_eq!(std::fs::read(&ids).unwrap(), bytes);
    let w_copy = s.path("w.safetensors");
    std::fs::copy(&w, &w_copy).unwrap();
    assert_refused(
        exec(
            &exe,
            &os(&[
                &"--input",
                &ids,
                &"--weights",
                &w_copy,
                &"--output",
                &w_copy,
            ]),
        ),
        &["--output", "--weights"],
    );
    assert_refused(
        exec(
            &exe,
            &os(&[&"--input", &ids, &"--output", &s.path("none/o.npy")]),
        ),
        &["--output", "does not exist"],
    );
    // A good run writes the output whole, with no temporary left.
    let out = s.path("logits.npy");
    let (code, err) = exec(&exe, &os(&[&"--input", &ids, &"--output", &out]));
    assert_eq!(code, 0, "{err}");
    assert!(std::fs::read(&out).unwrap().starts_with(b"\x93NUMPY"));
    assert!(
        !s.entries().iter().any(|e| e.contains(".tmp.")),
        "{:?}",
        s.entries()
    );
}

#[test]
fn failed_link_leaves_the_existing_executable_and_no_temporaries() {
    use std::os::unix::fs::PermissionsExt;
    let s = Scratch::new("link");
    // A "linker" that writes part of its output, then dies.
    let cc = s.path("bad-cc");
    std::fs::write(
        &cc,
        "#!/bin/sh\nwhile [ \"$1\" != -o ]; do shift; done\necho partial > \"$2\"\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&cc, std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = s.path("model");
    std::fs::write(&exe, b"previous executable").unwrap();
    let before = s.entries();
    let (cfg, w) = (s.path("config.json"), s.path("model.safetensors"));
    let out = Command::new(env!("CARGO_BIN_EXE_reformc"))
        .args(os(&[
            &"compile",
            &cfg,
            &"--weights",
            &w,
            &"-o",
            &exe,
            &"-q",
        ]))
        .env("CC", &cc)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("linking"), "{err}");
    assert_eq!(std::fs::read(&exe).unwrap(), b"previous executable");
    assert_eq!(s.entries(), before);
}
