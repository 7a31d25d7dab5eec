//! `--precision bf16` from the command line: `run` (LLVM JIT) and a compiled
//! executable give the same bits, differ from fp32 by bf16's rounding only,
//! and the commands that cannot honour it refuse it in one line.

use crate::common;

use common::Scratch;
use ndarray::ArrayD;
use ndarray_npy::ReadNpyExt;
use std::path::Path;
use std::process::Command;

const CASE: &str = "tests/fixtures/causal_mixed_r2";

/// Runs reformc in the repository root; returns (exit code, stderr).
fn reformc(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_reformc"))
        .args(args)
        .current_dir(common::root())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "reformc panicked: {stderr}");
    (out.status.code().unwrap_or(-1), stderr)
}

fn read(p: &Path) -> ArrayD<f32> {
    ArrayD::<f32>::read_npy(std::fs::File::open(p).unwrap()).unwrap()
}

#[test]
fn run_and_executable_agree_bit_for_bit_and_stay_near_fp32() {
    let dir = Scratch::new("cli-bf16");
    let p = |f: &str| dir.dir().join(f).display().to_string();
    let ids = format!("{CASE}/input_ids.npy");
    let buckets = format!("{CASE}/lsh_buckets.npy");
    let common = ["--input", &ids, "--lsh-buckets", &buckets, "-q"];
    for (precision, out) in [("bf16", p("run16.npy")), ("f32", p("run32.npy"))] {
        let mut args = vec!["run", CASE, "--precision", precision, "-o", &out];
        args.extend(common);
        let (code, err) = reformc(&args);
        assert_eq!(code, 0, "{err}");
    }
    let exe = p("model16");
    let (code, err) = reformc(&["compile", CASE, "--precision", "bf16", "-o", &exe, "-q"]);
    assert_eq!(code, 0, "{err}");
    let exe_out = p("exe16.npy");
    let st = Command::new(&exe)
        .args([
            "--input",
            &ids,
            "--lsh-buckets",
            &buckets,
            "--output",
            &exe_out,
        ])
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let (r16, r32, e16) = (
        read(Path::new(&p("run16.npy"))),
        read(Path::new(&p("run32.npy"))),
        read(Path::new(&exe_out)),
    );
    assert_eq!(r16, e16, "run and the executable, both bf16");
    assert_ne!(r16, r32, "bf16 changes the logits");
    let err: f64 = r16
        .iter()
        .zip(&r32)
        .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
        .sum();
    let norm: f64 = r32.iter().map(|b| (*b as f64).powi(2)).sum();
    assert!(
        (err / norm).sqrt() < 1e-2,
        "rel RMS {}",
        (err / norm).sqrt()
    );
}

/// Runs `reformc run --precision bf16 --profile` on fixture `dir` (HF's
/// buckets replayed, its attention mask given) with `REFORMC_RT_BF16` set to
/// `env`; returns the logits and stderr (the profile names the kernels).
fn run_bf16(dir: &Path, env: &str, out: &Path) -> (ArrayD<f32>, String) {
    let file = |f: &str| dir.join(f).display().to_string();
    let mut args = vec!["run".to_string(), dir.display().to_string()];
    args.extend(["--precision", "bf16", "--profile", "-q", "-o"].map(String::from));
    args.push(out.display().to_string());
    args.extend(["--input".into(), file("input_ids.npy")]);
    for (flag, f) in [
        ("--lsh-buckets", "lsh_buckets.npy"),
        ("--attention-mask", "attention_mask.npy"),
    ] {
        if dir.join(f).exists() {
            args.extend([flag.into(), file(f)]);
        }
    }
    let o = Command::new(env!("CARGO_BIN_EXE_reformc"))
        .args(&args)
        .env("REFORMC_RT_BF16", env)
        .current_dir(common::root())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{}: {stderr}", dir.display());
    (read(out), stderr)
}

/// The AMX micro-kernels, run on the tile model (`REFORMC_RT_BF16=amx-model`,
/// runtime/src/amx.rs) in every bf16 product of every HF fixture, stay
/// within bf16's accuracy of HF's float64 logits (relative RMS at most 1e-2,
/// the same arg-max at 99% of positions), as the AVX-512 BF16 kernels do,
/// and differ from them in bits (another order of additions): the tile
/// program, the driver around it and the packing are right before any AMX
/// machine runs them.
#[test]
fn amx_tile_model_stays_within_bf16_accuracy_of_hf() {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let has = |flag: &str| cpu.split_whitespace().any(|f| f == flag);
    if !has("avx512_bf16") {
        println!("skipped: the tile model runs on bf16 pair panels, which need AVX-512 BF16");
        return;
    }
    check_tiles("amx-model", "bf16 products on the AMX tile model");
    if has("amx_tile") && has("amx_bf16") {
        // The instructions themselves, on every fixture.
        check_tiles("amx", "bf16 products on AMX tiles");
    } else {
        println!("AMX instructions not run: this CPU has no AMX (the tile model was checked)");
    }
}

/// Every HF fixture with `REFORMC_RT_BF16=env`, whose profile must name the
/// tiles (`notice`; so no self-test failed and nothing was refused): within
/// bf16's accuracy of HF's float64 logits and not the AVX-512 BF16 bits.
fn check_tiles(env: &str, notice: &str) {
    let dir = Scratch::new("cli-amx");
    let (mut positions, mut same, mut differ) = (0usize, 0usize, 0usize);
    let (mut lo, mut hi) = (f64::INFINITY, 0f64);
    for case in common::fixtures() {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let (amx, err) = run_bf16(&case, env, &dir.dir().join(format!("{name}-amx.npy")));
        assert!(err.contains(notice), "{name}: the tiles did not run: {err}");
        let (avx, err) = run_bf16(
            &case,
            "avx512bf16",
            &dir.dir().join(format!("{name}-avx.npy")),
        );
        assert!(
            err.contains("bf16 products on AVX-512 BF16"),
            "{name}: {err}"
        );
        differ += usize::from(amx != avx);
        let want = common::read::<f64>(&case.join("logits_f64.npy"));
        let got = amx.mapv(f64::from);
        let err2: f64 = got.iter().zip(&want).map(|(g, w)| (g - w).powi(2)).sum();
        let norm: f64 = want.iter().map(|w| w * w).sum();
        let rms = (err2 / norm).sqrt();
        assert!(rms <= 1e-2, "{name}: relative RMS {rms}");
        (lo, hi) = (lo.min(rms), hi.max(rms));
        let last = ndarray::Axis(got.ndim() - 1);
        let argmax = |l: ndarray::ArrayView1<f64>| {
            l.iter()
                .enumerate()
                .fold(
                    (0, f64::NEG_INFINITY),
                    |b, (i, &v)| if v > b.1 { (i, v) } else { b },
                )
                .0
        };
        for (g, w) in got.lanes(last).into_iter().zip(want.lanes(last)) {
            positions += 1;
            same += usize::from(argmax(g) == argmax(w));
        }
    }
    assert!(
        same as f64 >= 0.99 * positions as f64,
        "arg-max {same} of {positions}"
    );
    assert!(differ > 0, "{env}: the AVX-512 BF16 bits on every fixture");
    println!(
        "{notice}: relative RMS {lo:.1e}-{hi:.1e} against HF's float64, arg-max {same} of \
         {positions}, bits other than AVX-512 BF16's on {differ} fixtures"
    );
}

#[test]
fn commands_without_bf16_refuse_it_in_one_line() {
    let ids = format!("{CASE}/input_ids.npy");
    for (args, needle) in [
        (
            vec![
                "run",
                CASE,
                "--input",
                &ids,
                "-o",
                "/tmp/reformc-bf16-x.npy",
                "--precision",
                "bf16",
                "--interp",
            ],
            "LLVM JIT only",
        ),
        (
            vec![
                "run",
                CASE,
                "--input",
                &ids,
                "-o",
                "/tmp/reformc-bf16-x.npy",
                "--precision",
                "bf16",
                "--backend",
                "mlir",
            ],
            "LLVM JIT only",
        ),
        (
            vec![
                "grad",
                CASE,
                "--input",
                &ids,
                "--output",
                "/tmp/reformc-bf16-x.safetensors",
                "--precision",
                "bf16",
                "--interp",
            ],
            "LLVM JIT only",
        ),
        (
            vec![
                "compile",
                CASE,
                "--precision",
                "bf16",
                "--emit",
                "mlir",
                "-o",
                "/tmp/x.mlir",
            ],
            "--emit mlir",
        ),
    ] {
        let (code, err) = reformc(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
        assert_eq!(lines.len(), 1, "{args:?}: {err}");
        assert!(
            lines[0].contains("bf16") && lines[0].contains(needle),
            "{args:?}: {err}"
        );
    }
}
