//! Input readers under hostile input, through `reformc run` and a compiled
//! executable: Fortran-ordered `.npy` files read as their C-order twins,
//! headers that promise more data than the file holds, endless files
//! (`/dev/zero`), oversized configs and the malformed safetensors corpus all
//! give exit code 2 and one line naming the file, never a crash or a hang.

use crate::common;

use common::Scratch;

use reformc_tensor::npy::{self, NpyData};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A fixture with a batch of 2, a mask and both LSH input files.
const CASE: &str = "tests/fixtures/noncausal_mask_b2";

fn fixture(f: &str) -> PathBuf {
    common::root().join(CASE).join(f)
}

/// Runs `cmd`, killing it if it has not finished after a generous while: a
/// reader stuck on an endless file must fail the test, not hang the suite.
fn output(cmd: &mut Command) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(300) {
            child.kill().ok();
            panic!("{cmd:?} did not finish (reading an endless input?)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn reformc(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_reformc"));
    cmd.args(args.iter().map(|a| a.as_ref()))
        .current_dir(common::root());
    output(&mut cmd)
}

/// Exit code 2 and one error line naming `file` and one of the `|`-separated `needle`s.
fn assert_error(out: &Output, file: &Path, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    assert_eq!(out.status.code(), Some(2), "expected exit code 2: {stderr}");
    // `run --compare` fails after the run, whose pass report is on stderr too.
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error") || l.contains("rror:"))
        .collect();
    assert_eq!(errors.len(), 1, "expected one error line, got: {stderr}");
    let line = errors[0];
    assert!(line.starts_with("error: "), "{line}");
    assert!(
        line.contains(&file.display().to_string()),
        "should name {}: {line}",
        file.display()
    );
    assert!(
        needle.split('|').any(|n| line.contains(n)),
        "should mention {needle:?}: {line}"
    );
}

/// The bytes of `c_data` (C order) stored column-major, with a header that says so.
fn fortran_npy(path: &Path) -> Vec<u8> {
    let a = npy::read(path).unwrap();
    let shape = a.shape.clone();
    let bytes = match a.data {
        NpyData::F32(v) => npy::to_bytes_f32(&shape, &to_fortran(&v, &shape)),
        NpyData::F64(v) => npy::to_bytes_f64(&shape, &to_fortran(&v, &shape)),
        NpyData::Int(v) => npy::to_bytes_i64(&shape, &to_fortran(&v, &shape)),
    };
    let at = bytes
        .windows(5)
        .position(|w| w == b"False")
        .expect("fortran_order in the header");
    let mut out = bytes;
    out[at..at + 5].copy_from_slice(b"True ");
    out
}

fn to_fortran<T: Copy + Default>(c: &[T], shape: &[usize]) -> Vec<T> {
    let mut f = vec![T::default(); c.len()];
    let mut idx = vec![0usize; shape.len()];
    for &x in c {
        let (mut off, mut stride) = (0, 1);
        for (i, d) in idx.iter().zip(shape) {
            off += i * stride;
            stride *= d;
        }
        f[off] = x;
        for k in (0..shape.len()).rev() {
            idx[k] += 1;
            if idx[k] < shape[k] {
                break;
            }
            idx[k] = 0;
        }
    }
    f
}

/// A header promising `shape` elements of `descr` and almost no data.
fn huge_npy(s: &Scratch, f: &str, shape: &[usize], float: bool) -> PathBuf {
    let mut bytes = if float {
        npy::to_bytes_f32(shape, &[])
    } else {
        npy::to_bytes_i64(shape, &[])
    };
    bytes.extend_from_slice(&[0; 16]);
    s.write(f, &bytes)
}

/// The four inputs of the case, as flags, from `dir` (C or Fortran order).
fn input_flags(dir: &Path, hashing: &str) -> Vec<String> {
    let p = |f: &str| dir.join(f).display().to_string();
    vec![
        "--input".into(),
        p("input_ids.npy"),
        "--attention-mask".into(),
        p("attention_mask.npy"),
        format!("--lsh-{hashing}"),
        p(&format!("lsh_{hashing}.npy")),
    ]
}

/// Writes Fortran-ordered copies of the case's inputs into `s`.
fn fortran_inputs(s: &Scratch) {
    for f in [
        "input_ids.npy",
        "attention_mask.npy",
        "lsh_rotations.npy",
        "lsh_buckets.npy",
    ] {
        s.write(f, &fortran_npy(&fixture(f)));
    }
}

fn run_cli(out: &Path, flags: &[String]) -> Vec<u8> {
    let (cfg, w) = (fixture("config.json"), fixture("model.safetensors"));
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
        &"run",
        &cfg,
        &"--weights",
        &w,
        &"--interp",
        &"--output",
        &out,
    ];
    for f in flags {
        args.push(f);
    }
    let o = reformc(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::read(out).unwrap()
}

#[test]
fn fortran_order_reads_as_c_order_in_run() {
    let s = Scratch::new("fortran_run");
    fortran_inputs(&s);
    for hashing in ["rotations", "buckets"] {
        let c = run_cli(&s.path("c.npy"), &input_flags(&fixture(""), hashing));
        let f = run_cli(&s.path("f.npy"), &input_flags(s.dir(), hashing));
        assert!(
            c == f,
            "{hashing}: Fortran-ordered inputs changed the output"
        );
    }
}

#[test]
fn huge_headers_are_refused_before_allocating() {
    let s = Scratch::new("huge");
    // (1, 10**12) int64 is 8 TB: allocating it would abort the process.
    let ids = huge_npy(&s, "ids.npy", &[1, 1_000_000_000_000], false);
    let rot = huge_npy(&s, "rot.npy", &[2, 2, 1_000_000, 1_000_000, 4], true);
    let bk = huge_npy(&s, "bk.npy", &[2, 2, 1_000_000, 1_000_000_000], false);
    let cmp = huge_npy(&s, "cmp.npy", &[2, 1_000_000_000_000], true);
    let (cfg, w) = (fixture("config.json"), fixture("model.safetensors"));
    let good = fixture("input_ids.npy");
    let out = s.path("out.npy");
    let cases: [(&str, &Path); 5] = [
        ("--input", &ids),
        ("--attention-mask", &ids),
        ("--lsh-rotations", &rot),
        ("--lsh-buckets", &bk),
        ("--compare", &cmp),
    ];
    for (flag, p) in cases {
        let input: &Path = if flag == "--input" { p } else { &good };
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
            &"run",
            &cfg,
            &"--weights",
            &w,
            &"--interp",
            &"--input",
            &input,
            &"--output",
            &out,
        ];
        if flag != "--input" {
            args.push(&flag);
            args.push(&p);
        }
        assert_error(&reformc(&args), p, "truncated .npy data");
    }
}

#[test]
fn endless_and_special_files_are_refused() {
    let s = Scratch::new("devzero");
    let zero = Path::new("/dev/zero");
    let (cfg, w, ids) = (
        fixture("config.json"),
        fixture("model.safetensors"),
        fixture("input_ids.npy"),
    );
    let out = s.path("out.npy");
    let run = |c: &Path, w: &Path, i: &Path| {
        reformc(&[
            &"run",
            &c,
            &"--weights",
            &w,
            &"--input",
            &i,
            &"--output",
            &out,
        ])
    };
    assert_error(&run(zero, &w, &ids), zero, "not a regular file");
    assert_error(&run(&cfg, zero, &ids), zero, "not a regular file");
    assert_error(&run(&cfg, &w, zero), zero, "not a regular file");
    let urandom = Path::new("/dev/urandom");
    assert_error(&run(urandom, &w, &ids), urandom, "not a regular file");
    // Opening a FIFO blocks until a writer comes: it must be refused unopened.
    let fifo = s.path("fifo");
    let made = Command::new("mkfifo").arg(&fifo).status();
    if made.is_ok_and(|st| st.success()) {
        assert_error(&run(&fifo, &w, &ids), &fifo, "not a regular file");
        assert_error(&run(&cfg, &fifo, &ids), &fifo, "not a regular file");
        assert_error(&run(&cfg, &w, &fifo), &fifo, "not a regular file");
    }
}

#[test]
fn config_over_16_mib_is_refused() {
    let s = Scratch::new("bigcfg");
    let cfg = s.path("config.json");
    // Sparse: nothing is written to disk.
    std::fs::File::create(&cfg)
        .and_then(|f| f.set_len((16 << 20) + 1))
        .unwrap();
    let (w, ids, out) = (
        fixture("model.safetensors"),
        fixture("input_ids.npy"),
        s.path("out.npy"),
    );
    let o = reformc(&[
        &"run",
        &cfg,
        &"--weights",
        &w,
        &"--input",
        &ids,
        &"--output",
        &out,
    ]);
    assert_error(&o, &cfg, "16 MiB");
    let o = reformc(&[&"dump", &cfg]);
    assert_error(&o, &cfg, "16 MiB");
}

#[test]
fn safetensors_corpus_is_current() {
    let dir = common::root().join("tests/corpus/safetensors");
    let files = common::malformed_safetensors();
    if std::env::var_os("REFORMC_BLESS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        let mut list = String::new();
        for m in &files {
            std::fs::write(dir.join(m.name), &m.bytes).unwrap();
            list.push_str(&format!("{}\t{}\n", m.name, m.needle));
        }
        std::fs::write(dir.join("expect.txt"), list).unwrap();
    }
    let corpus = common::malformed_safetensors_corpus();
    assert_eq!(corpus.len(), files.len(), "rerun with REFORMC_BLESS=1");
    for (m, (path, needle)) in files.iter().zip(&corpus) {
        assert_eq!(path, &dir.join(m.name), "rerun with REFORMC_BLESS=1");
        assert_eq!(needle, m.needle, "{}", m.name);
        let bytes = std::fs::read(path).unwrap();
        assert!(
            bytes == m.bytes,
            "{} differs: rerun with REFORMC_BLESS=1",
            m.name
        );
    }
}

#[test]
fn malformed_weights_are_refused_by_run() {
    let s = Scratch::new("badweights");
    let (cfg, ids, out) = (
        fixture("config.json"),
        fixture("input_ids.npy"),
        s.path("out.npy"),
    );
    for (w, needle) in common::malformed_safetensors_corpus() {
        let o = reformc(&[
            &"run",
            &cfg,
            &"--weights",
            &w,
            &"--input",
            &ids,
            &"--output",
            &out,
        ]);
        assert_error(&o, &w, &needle);
    }
}

/// The case compiled to an executable, once for the tests that need it.
fn executable() -> PathBuf {
    static EXE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    EXE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("reformc-readers-{}-exe", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let exe = dir.join("model");
        let (cfg, w) = (fixture("config.json"), fixture("model.safetensors"));
        let o = reformc(&[&"compile", &cfg, &"--weights", &w, &"-o", &exe]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        exe
    })
    .clone()
}

fn run_exe(args: &[String]) -> Output {
    let mut cmd = Command::new(executable());
    cmd.args(args);
    output(&mut cmd)
}

fn exe_output(out: &Path, flags: &[String]) -> Vec<u8> {
    let mut args = flags.to_vec();
    args.extend(["--output".into(), out.display().to_string()]);
    let o = run_exe(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::read(out).unwrap()
}

#[test]
fn executable_reads_fortran_order_and_weights_in_both_modes() {
    let s = Scratch::new("exe_fortran");
    fortran_inputs(&s);
    for hashing in ["rotations", "buckets"] {
        let c = exe_output(&s.path("c.npy"), &input_flags(&fixture(""), hashing));
        let f = exe_output(&s.path("f.npy"), &input_flags(s.dir(), hashing));
        assert!(
            c == f,
            "{hashing}: Fortran-ordered inputs changed the output"
        );
        let mut read = input_flags(&fixture(""), hashing);
        read.extend(["--weights-mode".into(), "read".into()]);
        let r = exe_output(&s.path("r.npy"), &read);
        assert!(c == r, "{hashing}: --weights-mode read changed the output");
    }
    let mut bad = input_flags(&fixture(""), "rotations");
    bad.extend([
        "--weights-mode".into(),
        "embed".into(),
        "--output".into(),
        "x".into(),
    ]);
    let o = run_exe(&bad);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--weights-mode: `embed`"));
}

#[test]
fn executable_refuses_huge_headers_endless_files_and_bad_weights() {
    let s = Scratch::new("exe_bad");
    let out = s.path("out.npy").display().to_string();
    let ids = huge_npy(&s, "ids.npy", &[1, 1_000_000_000_000], false);
    let rot = huge_npy(&s, "rot.npy", &[2, 2, 1_000_000, 1_000_000, 4], true);
    let bk = huge_npy(&s, "bk.npy", &[2, 2, 1_000_000, 1_000_000_000], false);
    let good = fixture("input_ids.npy").display().to_string();
    let zero = Path::new("/dev/zero");
    let cases: [(&str, &Path, &str); 6] = [
        ("--input", &ids, "truncated .npy data"),
        ("--attention-mask", &ids, "truncated .npy data"),
        ("--lsh-rotations", &rot, "truncated .npy data"),
        ("--lsh-buckets", &bk, "truncated .npy data"),
        ("--input", zero, "not a regular file"),
        ("--weights", zero, "not a regular file"),
    ];
    for (flag, p, needle) in cases {
        let mut args = vec!["--output".to_string(), out.clone()];
        if flag != "--input" {
            args.extend(["--input".into(), good.clone()]);
        }
        args.extend([flag.to_string(), p.display().to_string()]);
        assert_error(&run_exe(&args), p, needle);
    }
    let fifo = s.path("fifo");
    if Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .is_ok_and(|st| st.success())
    {
        for flag in ["--input", "--weights"] {
            let mut args = vec!["--output".to_string(), out.clone()];
            if flag != "--input" {
                args.extend(["--input".into(), good.clone()]);
            }
            args.extend([flag.to_string(), fifo.display().to_string()]);
            assert_error(&run_exe(&args), &fifo, "not a regular file");
        }
    }
    for (w, needle) in common::malformed_safetensors_corpus() {
        for mode in ["mmap", "read"] {
            let args: Vec<String> = vec![
                "--input".into(),
                good.clone(),
                "--output".into(),
                out.clone(),
                "--weights-mode".into(),
                mode.into(),
                "--weights".into(),
                w.display().to_string(),
            ];
            assert_error(&run_exe(&args), &w, &needle);
        }
    }
}
