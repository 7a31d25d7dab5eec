//! The GPU backend on every Hugging Face fixture:
//! - `reformc compile --target gpu --emit ptx` for sm_80 and sm_90, each PTX
//!   assembled by NVIDIA's `ptxas` (from `.venv-gpu`, which scripts/setup.sh
//!   installs; CI sets `REFORMC_REQUIRE_PTXAS=1` so that a missing one fails);
//! - `reformc run --backend gpu` against HF's float64 logits (1e-4) where a
//!   CUDA driver is present (`scripts/gpu-check.sh` sets
//!   `REFORMC_REQUIRE_GPU=1`); elsewhere the test prints why it skips;
//! - the run's errors without a driver, and with a stand-in driver
//!   (`tests/gpu/fake_libcuda.c`) that reports no such device, an older
//!   device, no memory or PTX it cannot load.
//!
//! Each fixture test runs every case and then reports all the failures.

use crate::common;

use common::{fixtures, max_abs_diff, Case, Scratch};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

fn reformc(args: &[&dyn AsRef<std::ffi::OsStr>], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_reformc"));
    cmd.args(args.iter().map(|a| a.as_ref()))
        .current_dir(common::root());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("reformc runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `ptxas`: `REFORMC_PTXAS`, else the project's `.venv-gpu`.
fn ptxas() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("REFORMC_PTXAS") {
        return Some(p.into());
    }
    let lib = common::root().join(".venv-gpu/lib");
    std::fs::read_dir(lib).ok()?.flatten().find_map(|py| {
        let p = py.path().join("site-packages/nvidia/cuda_nvcc/bin/ptxas");
        p.is_file().then_some(p)
    })
}

/// Runs `check` on every fixture and fails listing every failure.
fn for_cases(check: impl Fn(&Case, &Scratch) -> Result<(), String>) {
    let mut failures = Vec::new();
    let cases = fixtures();
    for dir in &cases {
        let case = Case::load(dir);
        let scratch = Scratch::new(&format!("gpu-{}", case.name));
        if let Err(e) = check(&case, &scratch) {
            failures.push(format!("{}: {e}", case.name));
        }
    }
    assert!(!cases.is_empty(), "no fixture");
    assert!(
        failures.is_empty(),
        "{} of {} fixtures fail:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// The model flags of `case`: config, weights and the replayed LSH source.
fn compile_ptx(case: &Case, arch: &str, out: &Path) -> Result<(), String> {
    let source = if case.has_buckets() {
        "buckets"
    } else {
        "seeded"
    };
    let len = case.seq_len().to_string();
    let (code, _, err) = reformc(
        &[
            &"compile",
            &case.dir.join("config.json"),
            &"--weights",
            &case.dir.join("model.safetensors"),
            &"--target",
            &"gpu",
            &"--emit",
            &"ptx",
            &"--gpu-arch",
            &arch,
            &"--lsh-source",
            &source,
            &"--seq-len",
            &len,
            &"-o",
            &out,
            &"-q",
        ],
        &[],
    );
    if code != 0 {
        return Err(format!(
            "compile --gpu-arch {arch}: exit {code}: {}",
            err.trim()
        ));
    }
    Ok(())
}

#[test]
fn every_fixture_compiles_to_ptx_that_ptxas_assembles_for_sm_80_and_sm_90() {
    let ptxas = ptxas();
    if ptxas.is_none() {
        assert!(
            std::env::var_os("REFORMC_REQUIRE_PTXAS").is_none(),
            "REFORMC_REQUIRE_PTXAS is set and no ptxas was found: run scripts/setup.sh"
        );
        eprintln!("skipping ptxas (the PTX is still emitted and checked): no .venv-gpu/.../ptxas and no REFORMC_PTXAS; scripts/setup.sh installs it");
    }
    for_cases(|case, dir| {
        for arch in ["sm_80", "sm_90"] {
            let ptx = dir.path(&format!("kernels-{arch}.ptx"));
            compile_ptx(case, arch, &ptx)?;
            let text = std::fs::read_to_string(&ptx).map_err(|e| e.to_string())?;
            if !text.contains(&format!(".target {arch}")) {
                return Err(format!("{arch}: the PTX has no `.target {arch}`"));
            }
            let entries = reformc_backend_gpu::entries(&text);
            if entries.is_empty() || text.contains(".extern .func") {
                return Err(format!(
                    "{arch}: {} entries, unresolved functions: {}",
                    entries.len(),
                    text.contains(".extern .func")
                ));
            }
            if let Some(ptxas) = &ptxas {
                let out = Command::new(ptxas)
                    .arg(format!("-arch={arch}"))
                    .arg(&ptx)
                    .arg("-o")
                    .arg(dir.path(&format!("kernels-{arch}.cubin")))
                    .output()
                    .map_err(|e| format!("ptxas: {e}"))?;
                if !out.status.success() {
                    return Err(format!(
                        "ptxas -arch={arch} rejects the PTX: {}",
                        String::from_utf8_lossy(&out.stderr)
                    ));
                }
            }
        }
        Ok(())
    });
}

/// `run --backend gpu` on `case` with `extra` flags and environment.
fn run_gpu(
    case: &Case,
    dir: &Scratch,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (i32, String, String, PathBuf) {
    let out = dir.path("logits.npy");
    let (config, weights, ids) = (
        case.dir.join("config.json"),
        case.dir.join("model.safetensors"),
        case.dir.join("input_ids.npy"),
    );
    let (mask, buckets) = (
        case.dir.join("attention_mask.npy"),
        case.dir.join("lsh_buckets.npy"),
    );
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
        &"run",
        &config,
        &"--weights",
        &weights,
        &"--input",
        &ids,
        &"--output",
        &out,
        &"--backend",
        &"gpu",
        &"-q",
    ];
    if case.has_mask {
        args.extend([&"--attention-mask" as &dyn AsRef<std::ffi::OsStr>, &mask]);
    }
    if case.has_buckets() {
        args.extend([&"--lsh-buckets" as &dyn AsRef<std::ffi::OsStr>, &buckets]);
    }
    args.extend(extra.iter().map(|s| s as &dyn AsRef<std::ffi::OsStr>));
    let (code, o, e) = reformc(&args, env);
    (code, o, e, out)
}

#[test]
fn every_fixture_runs_on_the_gpu_like_hf() {
    if reformc_backend_gpu::driver_path().is_none() {
        assert!(
            std::env::var_os("REFORMC_REQUIRE_GPU").is_none(),
            "REFORMC_REQUIRE_GPU is set and no CUDA driver (libcuda.so.1) loads"
        );
        eprintln!("skipping the GPU runs: no CUDA driver (libcuda.so.1) on this machine; scripts/gpu-check.sh runs them where there is one");
        return;
    }
    for_cases(|case, dir| {
        let (code, _, err, out) = run_gpu(case, dir, &[], &[]);
        if code != 0 {
            return Err(format!("run --backend gpu: exit {code}: {}", err.trim()));
        }
        check_against_hf(case, &out, "run --backend gpu")?;
        // The compiled executable, on the same inputs.
        let exe = compile_exe(case, dir, &[]);
        let out = dir.path("exe-logits.npy");
        let (code, _, err) = run_exe(&exe, case, &out, &[], &[]);
        if code != 0 {
            return Err(format!("GPU executable: exit {code}: {}", err.trim()));
        }
        check_against_hf(case, &out, "GPU executable")
    });
}

/// The logits in `out` against HF's float64 ones (1e-4).
fn check_against_hf(case: &Case, out: &Path, what: &str) -> Result<(), String> {
    let got: ndarray::ArrayD<f32> = common::read(out);
    let want = case.reference_f64();
    if got.shape() != want.shape() {
        return Err(format!(
            "{what}: shape {:?}, expected {:?}",
            got.shape(),
            want.shape()
        ));
    }
    let err = max_abs_diff(&got.mapv(f64::from), &want);
    eprintln!(
        "{}: {what}: max |err| {err:.2e} against HF float64",
        case.name
    );
    if err > 1e-4 {
        return Err(format!("{what}: max |err| {err:.2e} against HF float64"));
    }
    Ok(())
}

/// The first fixture, for the error paths.
fn one_case() -> Case {
    Case::load(&common::fixture("causal_lsh_r1"))
}

/// A one-line error on stderr, exit 2, containing every needle.
fn assert_error(got: (i32, String, String, PathBuf), needles: &[&str]) {
    let (code, _, err, _) = got;
    let last = err.trim().lines().last().unwrap_or("").to_string();
    assert_eq!(code, 2, "stderr: {err}");
    for n in needles {
        assert!(last.contains(n), "`{n}` not in the error line: {last}");
    }
}

#[test]
fn without_a_driver_run_backend_gpu_exits_2_saying_so() {
    let case = one_case();
    let dir = Scratch::new("gpu-no-driver");
    // A library that does not exist stands for a machine without a driver.
    let missing = dir.path("no-such-libcuda.so");
    let env = [("REFORMC_LIBCUDA", missing.to_str().unwrap())];
    if reformc_backend_gpu::driver_path().is_some() {
        eprintln!("skipping: this machine has a CUDA driver, which the loader would find after REFORMC_LIBCUDA");
        return;
    }
    assert_error(run_gpu(&case, &dir, &[], &env), &["no CUDA driver found"]);
}

/// Builds the stand-in driver with the C compiler; `None` (with the reason
/// printed) when there is none.
fn fake_driver(dir: &Scratch) -> Option<PathBuf> {
    let so = dir.path("libfakecuda.so");
    let src = common::root().join("tests/gpu/fake_libcuda.c");
    let built = Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&so)
        .arg(&src)
        .status();
    match built {
        Ok(s) if s.success() => Some(so),
        other => panic!("cc could not build {}: {other:?}", src.display()),
    }
}

#[test]
fn a_stand_in_driver_s_refusals_are_one_line_errors() {
    let case = one_case();
    let dir = Scratch::new("gpu-fake-driver");
    let Some(so) = fake_driver(&dir) else { return };
    let lib = so.to_str().unwrap();
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut env = vec![("REFORMC_LIBCUDA", lib)];
        env.extend_from_slice(extra);
        env
    };
    assert_error(
        run_gpu(&case, &dir, &["--device", "3"], &with(&[])),
        &["device 3 not present", "reports 1 device(s)"],
    );
    assert_error(
        run_gpu(&case, &dir, &[], &with(&[("FAKE_CUDA_CC", "80")])),
        &["compiled for sm_90", "Fake GPU", "sm_80", "--gpu-arch"],
    );
    assert_error(
        run_gpu(&case, &dir, &[], &with(&[("FAKE_CUDA_OOM", "1")])),
        &["out of device memory allocating"],
    );
    assert_error(
        run_gpu(&case, &dir, &[], &with(&[("FAKE_CUDA_BAD_PTX", "1")])),
        &["loading the kernels", "CUDA_ERROR_INVALID_PTX"],
    );
}

#[test]
fn gpu_flags_that_do_not_apply_are_refused() {
    let case = one_case();
    let dir = Scratch::new("gpu-flags");
    let out = dir.path("k.ptx");
    let (config, weights) = (
        case.dir.join("config.json"),
        case.dir.join("model.safetensors"),
    );
    for (flags, needle) in [
        (
            &["--target", "gpu", "--emit", "staticlib"][..],
            "ptx (the kernels), exe or lib",
        ),
        (&["--emit", "ptx"][..], "add --target gpu"),
        (
            &["--target", "gpu", "--emit", "ptx", "--gpu-arch", "sm_75"][..],
            "sm_80, sm_90",
        ),
        (
            &["--target", "gpu", "--emit", "ptx", "--train"][..],
            "--train",
        ),
        (
            &[
                "--target",
                "gpu",
                "--emit",
                "ptx",
                "--libdevice",
                "/nonexistent.bc",
            ][..],
            "/nonexistent.bc",
        ),
    ] {
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
            &"compile",
            &config,
            &"--weights",
            &weights,
            &"-o",
            &out,
            &"-q",
        ];
        args.extend(flags.iter().map(|s| s as &dyn AsRef<std::ffi::OsStr>));
        let (code, _, err) = reformc(&args, &[]);
        assert_eq!(code, 2, "{flags:?}: {err}");
        assert!(err.contains(needle), "{flags:?}: `{needle}` not in {err}");
    }
}

/// `compile --target gpu --emit exe` of `case` into `dir`, with the one LSH
/// source its inputs use (the quicker compile).
fn compile_exe(case: &Case, dir: &Scratch, extra: &[&str]) -> PathBuf {
    let source = if case.has_buckets() {
        "buckets"
    } else {
        "seeded"
    };
    let mut with_source = vec!["--lsh-source", source];
    with_source.extend_from_slice(extra);
    compile_exe_with(case, dir, &with_source)
}

/// `compile --target gpu --emit exe` of `case` into `dir` with `extra`.
fn compile_exe_with(case: &Case, dir: &Scratch, extra: &[&str]) -> PathBuf {
    let exe = dir.path("model-gpu");
    let (config, weights) = (
        case.dir.join("config.json"),
        case.dir.join("model.safetensors"),
    );
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
        &"compile",
        &config,
        &"--weights",
        &weights,
        &"--target",
        &"gpu",
        &"--emit",
        &"exe",
        &"-o",
        &exe,
        &"-q",
    ];
    args.extend(extra.iter().map(|s| s as &dyn AsRef<std::ffi::OsStr>));
    let (code, _, err) = reformc(&args, &[]);
    assert_eq!(code, 0, "compile --target gpu --emit exe: {err}");
    exe
}

/// Runs a GPU executable on `case`'s inputs with `extra` flags and `env`.
fn run_exe(
    exe: &Path,
    case: &Case,
    out: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (i32, String, String) {
    let mut cmd = Command::new(exe);
    cmd.arg("--input")
        .arg(case.dir.join("input_ids.npy"))
        .arg("--output")
        .arg(out);
    if case.has_mask {
        cmd.arg("--attention-mask")
            .arg(case.dir.join("attention_mask.npy"));
    }
    if case.has_buckets() {
        cmd.arg("--lsh-buckets")
            .arg(case.dir.join("lsh_buckets.npy"));
    }
    cmd.args(extra);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let o = cmd.output().expect("the executable runs");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A GPU executable's command line, end to end, on a machine without a GPU:
/// `--help`; no driver; the stand-in driver, which runs no kernel (so the
/// output's values mean nothing, and only its shape is checked) but answers
/// every driver call, so that loading the weights into managed memory,
/// staging the inputs, calling `@forward` and writing the output all run;
/// then the refusals (no such device, an older device, a token id out of
/// range, another model's weights), each exit 2 and one line.
#[test]
fn a_gpu_executable_runs_its_command_line_on_a_stand_in_driver() {
    let case = one_case();
    let dir = Scratch::new("gpu-exe");
    let exe = compile_exe(&case, &dir, &[]);
    let help = Command::new(&exe).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.status.success() && text.contains("--device N") && text.contains("--input"),
        "{text}"
    );
    let out = dir.path("logits.npy");
    let missing = dir.path("no-such-libcuda.so");
    if reformc_backend_gpu::driver_path().is_none() {
        let (code, _, err) = run_exe(
            &exe,
            &case,
            &out,
            &[],
            &[("REFORMC_LIBCUDA", missing.to_str().unwrap())],
        );
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("no CUDA driver found"), "{err}");
    }
    let Some(so) = fake_driver(&dir) else { return };
    let lib = so.to_str().unwrap();
    let (code, stdout, err) = run_exe(&exe, &case, &out, &["--time"], &[("REFORMC_LIBCUDA", lib)]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("wrote logits [1, 64, 48]"), "{stdout}");
    assert!(err.contains("load weights"), "{err}");
    let got: ndarray::ArrayD<f32> = common::read(&out);
    assert_eq!(got.shape(), case.reference_f64().shape());
    for (extra, env, needle) in [
        (&["--device", "2"][..], vec![], "device 2 not present"),
        (&[][..], vec![("FAKE_CUDA_CC", "80")], "sm_80"),
        (
            &[][..],
            vec![("FAKE_CUDA_OOM", "1")],
            "out of device memory",
        ),
    ] {
        let mut env = env;
        env.push(("REFORMC_LIBCUDA", lib));
        let (code, _, err) = run_exe(&exe, &case, &out, extra, &env);
        assert_eq!(code, 2, "{extra:?} {env:?}: {err}");
        assert!(
            err.trim().lines().count() == 1 && err.contains(needle),
            "{extra:?}: {err}"
        );
    }
    // A token id past the vocabulary: the shared input checks refuse it.
    let mut ids = case.ids.clone();
    ids[[0, 3]] = 10_000;
    let bad = dir.path("bad_ids.npy");
    common::write(&bad, &ids);
    let (code, _, err) = run_exe(
        &exe,
        &case,
        &out,
        &["--input", bad.to_str().unwrap()],
        &[("REFORMC_LIBCUDA", lib)],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("token id 10000"), "{err}");
    // Another model's weights: named tensor, expected against found.
    let other = common::fixture("act_relu6").join("model.safetensors");
    let (code, _, err) = run_exe(
        &exe,
        &case,
        &out,
        &["--weights", other.to_str().unwrap()],
        &[("REFORMC_LIBCUDA", lib)],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("cannot load weights") && err.contains("tensor"),
        "{err}"
    );
}

/// A GPU executable compiled without `--lsh-source` carries every LSH
/// source, as a CPU executable does, and its command line picks one:
/// `--lsh-buckets` runs the buckets variant's kernels, `--lsh-rotations` the
/// rotations variant's, neither (`--seed`) the seeded one's (the stand-in
/// driver logs each kernel looked up). `--signature` lists the three
/// variants. One compiled with `--lsh-source buckets` refuses the others
/// with exit 2 and one line.
#[test]
fn a_gpu_executable_carries_every_lsh_source() {
    let case = one_case();
    let dir = Scratch::new("gpu-exe-sources");
    let exe = compile_exe_with(&case, &dir, &[]);
    let sig = Command::new(&exe).arg("--signature").output().unwrap();
    let sig: serde_json::Value = serde_json::from_slice(&sig.stdout).unwrap();
    let names: Vec<&str> = sig["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["seeded", "rotations", "buckets"], "{sig}");
    assert_eq!(sig["variants"][1]["entry"], "forward_rotations", "{sig}");
    assert_eq!(
        sig["variants"][1]["inputs"][2]["name"], "lsh_rotations",
        "{sig}"
    );
    let Some(so) = fake_driver(&dir) else { return };
    let (out, log) = (dir.path("logits.npy"), dir.path("kernels.log"));
    let run = |exe: &Path, flags: &[&std::ffi::OsStr]| {
        let _ = std::fs::remove_file(&log);
        let o = Command::new(exe)
            .arg("--input")
            .arg(case.dir.join("input_ids.npy"))
            .arg("--output")
            .arg(&out)
            .args(flags)
            .env("REFORMC_LIBCUDA", &so)
            .env("FAKE_CUDA_LOG", &log)
            .output()
            .unwrap();
        let kernels = std::fs::read_to_string(&log).unwrap_or_default();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
            kernels,
        )
    };
    let (buckets, rotations) = (
        case.dir.join("lsh_buckets.npy"),
        case.dir.join("lsh_rotations.npy"),
    );
    for (flags, variant) in [
        (
            vec![OsStr::new("--lsh-buckets"), buckets.as_os_str()],
            "buckets",
        ),
        (
            vec![OsStr::new("--lsh-rotations"), rotations.as_os_str()],
            "rotations",
        ),
        (vec![OsStr::new("--seed"), OsStr::new("5")], "seeded"),
    ] {
        let (code, err, kernels) = run(&exe, &flags);
        assert_eq!(code, Some(0), "{variant}: {err}");
        let prefix = format!("forward_{variant}_kernel");
        assert!(
            !kernels.is_empty() && kernels.lines().all(|k| k.starts_with(&prefix)),
            "{variant}: kernels looked up:\n{kernels}"
        );
    }
    let only = dir.path("only-buckets");
    std::fs::rename(compile_exe(&case, &dir, &[]), &only).unwrap();
    for (flags, needle) in [
        (
            vec![OsStr::new("--seed"), OsStr::new("5")],
            "needs --lsh-rotations or --lsh-buckets",
        ),
        (
            vec![OsStr::new("--lsh-rotations"), rotations.as_os_str()],
            "without the rotations variant",
        ),
    ] {
        let (code, err, _) = run(&only, &flags);
        assert_eq!(code, Some(2), "{err}");
        assert!(
            err.trim().lines().count() == 1 && err.contains(needle),
            "{err}"
        );
    }
}

/// `examples/tiny-reformer` compiled into `libtiny.so` (and `model.h`) in
/// `dir` with `--target gpu --emit lib`; returns the model folder and the
/// library.
fn tiny_gpu_library(dir: &Scratch) -> (PathBuf, PathBuf) {
    let model = common::root().join("examples/tiny-reformer");
    let so = dir.path("libtiny.so");
    let args: [&dyn AsRef<std::ffi::OsStr>; 9] = [
        &"compile",
        &model,
        &"--target",
        &"gpu",
        &"--emit",
        &"lib",
        &"-o",
        &so,
        &"-q",
    ];
    let (code, _, err) = reformc(&args, &[]);
    assert_eq!(code, 0, "{err}");
    (model, so)
}

/// The user guide's C example (`examples/c-abi/main.c`), unchanged, against
/// a GPU library (`compile --target gpu --emit lib`): without a driver the
/// weights load fails with the driver's message; on the stand-in driver
/// the program runs to the end and prints the output's shape (its values
/// mean nothing: the stand-in runs no kernel). The library exports exactly
/// the CPU library's functions plus `reformc_model_set_device`.
#[test]
fn a_gpu_library_serves_the_c_example_on_a_stand_in_driver() {
    let dir = Scratch::new("gpu-lib");
    let root = common::root();
    let (model, so) = tiny_gpu_library(&dir);
    let header = std::fs::read_to_string(dir.path("model.h")).unwrap();
    assert!(
        header.contains("int32_t reformc_model_set_device(int32_t device);"),
        "{header}"
    );
    let prog = dir.path("tiny");
    common::cc_against_library(&root.join("examples/c-abi/main.c"), dir.dir(), &so, &prog);
    let weights = model.join("model.safetensors");
    let run = |env: &[(&str, &str)]| {
        let mut c = Command::new(&prog);
        c.arg(&weights);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    if reformc_backend_gpu::driver_path().is_none() {
        let missing = dir.path("no-such-libcuda.so");
        let o = run(&[("REFORMC_LIBCUDA", missing.to_str().unwrap())]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{err}");
        assert!(
            err.contains("loading the weights failed") && err.contains("no CUDA driver found"),
            "{err}"
        );
    }
    let Some(fake) = fake_driver(&dir) else {
        return;
    };
    let o = run(&[("REFORMC_LIBCUDA", fake.to_str().unwrap())]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.starts_with("logits: [1, 32, 64] f32\n"), "{out}");
    let nm = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&so)
        .output()
        .unwrap();
    let mut exported: Vec<String> = String::from_utf8_lossy(&nm.stdout)
        .lines()
        .filter(|l| l.contains(" T "))
        .filter_map(|l| l.split_whitespace().last().map(str::to_string))
        .collect();
    exported.sort();
    let mut want: Vec<String> = reformc_backend_llvm::aot::EXPORTS
        .iter()
        .map(|s| s.to_string())
        .collect();
    want.push("reformc_model_set_device".into());
    want.sort();
    assert_eq!(exported, want);
}

/// A program against a GPU library: `sig` prints the signature; `set FILE
/// COUNT...` reads the weights' f32 values (signature order, COUNT values
/// each) from FILE into arrays of its own, checks that a wrong count and a
/// NULL pointer are refused, hands the arrays to `reformc_model_set_weights`,
/// overwrites and frees them (the library holds copies), runs the model and
/// prints the output's shape.
const SET_WEIGHTS_C: &str = r#"#include "model.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(int argc, char **argv) {
  if (argc == 2 && strcmp(argv[1], "sig") == 0) { puts(reformc_model_signature()); return 0; }
  if (argc < 4 || strcmp(argv[1], "set") != 0) return 2;
  int64_t n = argc - 3;
  FILE *f = fopen(argv[2], "rb");
  void **ptrs = calloc((size_t)n, sizeof(void *));
  size_t *counts = calloc((size_t)n, sizeof(size_t));
  if (!f || !ptrs || !counts) return 3;
  for (int64_t i = 0; i < n; i++) {
    counts[i] = (size_t)atol(argv[3 + i]);
    ptrs[i] = malloc(counts[i] * sizeof(float));
    if (!ptrs[i] || fread(ptrs[i], sizeof(float), counts[i], f) != counts[i]) return 4;
  }
  fclose(f);
  const void *const *p = (const void *const *)ptrs;
  if (reformc_model_set_weights(p, n - 1) != REFORMC_ERR_ARGUMENT) return 10;
  void *keep = ptrs[1];
  ptrs[1] = NULL;
  if (reformc_model_set_weights(p, n) != REFORMC_ERR_ARGUMENT) return 11;
  fprintf(stderr, "refused: %s\n", reformc_model_last_error());
  ptrs[1] = keep;
  int32_t rc = reformc_model_set_weights(p, n);
  if (rc != REFORMC_OK) { fprintf(stderr, "%s\n", reformc_model_last_error()); return 12; }
  for (int64_t i = 0; i < n; i++) { memset(ptrs[i], 0xff, counts[i] * sizeof(float)); free(ptrs[i]); }
  int64_t ids[32], seed = 0, shape[2] = {1, 32};
  for (int i = 0; i < 32; i++) ids[i] = (7 * i + 3) % 64;
  reformc_tensor in[3], out;
  if (reformc_tensor_init(&in[0], REFORMC_I64, 2, shape, ids) != REFORMC_OK ||
      reformc_tensor_init(&in[1], REFORMC_I64, 2, shape, NULL) != REFORMC_OK ||
      reformc_tensor_init(&in[2], REFORMC_I64, 0, NULL, &seed) != REFORMC_OK) return 13;
  rc = reformc_model_run(in, 3, &out, 1);
  if (rc != REFORMC_OK) { fprintf(stderr, "%s\n", reformc_model_last_error()); return 14; }
  printf("output: [%lld, %lld, %lld]\n", (long long)out.shape[0], (long long)out.shape[1],
         (long long)out.shape[2]);
  reformc_tensor_release(&out);
  return 0;
}
"#;

/// A GPU library takes the caller's arrays as weights
/// (`reformc_model_set_weights`, as a CPU library does): a wrong count and a
/// NULL pointer are refused with `REFORMC_ERR_ARGUMENT`, the right ones are
/// copied into device memory (the caller frees them before the run), and
/// the model runs on the stand-in driver.
#[test]
fn a_gpu_library_takes_weights_from_caller_arrays() {
    let dir = Scratch::new("gpu-lib-set-weights");
    let (model, so) = tiny_gpu_library(&dir);
    let src = dir.path("set_weights.c");
    std::fs::write(&src, SET_WEIGHTS_C).unwrap();
    let prog = dir.path("set_weights");
    common::cc_against_library(&src, dir.dir(), &so, &prog);
    let Some(fake) = fake_driver(&dir) else {
        return;
    };
    let run = |args: &[String]| {
        Command::new(&prog)
            .args(args)
            .env("REFORMC_LIBCUDA", &fake)
            .output()
            .unwrap()
    };
    let sig = run(&["sig".into()]);
    let sig: serde_json::Value = serde_json::from_slice(&sig.stdout).unwrap();
    let file = std::fs::read(model.join("model.safetensors")).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&file).unwrap();
    let (mut bytes, mut counts) = (Vec::new(), Vec::new());
    let inputs = sig["inputs"].as_array().unwrap();
    for w in inputs.iter().filter(|i| i["kind"] == "weight") {
        let t = tensors.tensor(w["name"].as_str().unwrap()).unwrap();
        bytes.extend_from_slice(t.data());
        counts.push((t.data().len() / 4).to_string());
    }
    assert!(counts.len() > 2, "{sig}");
    let data = dir.path("weights.bin");
    std::fs::write(&data, bytes).unwrap();
    let mut args = vec!["set".to_string(), data.display().to_string()];
    args.extend(counts);
    let o = run(&args);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "exit {:?}: {err}", o.status.code());
    assert!(err.contains("expected 52 non-NULL pointers"), "{err}");
    assert_eq!(out, "output: [1, 32, 64]\n");
}
