//! Ahead-of-time artifacts: a C program compiled against `model.h` and linked
//! to the shared library runs a fixture; executables with embedded weights;
//! bad inputs to executables give a non-zero exit and a message, never a
//! crash; LLVM IR, assembly and object files.

use crate::common;

use common::{fixture, max_abs_diff, read, run, scratch, write, Case, CompileCase};
use ndarray::{ArrayD, IxDyn};
use reformc_backend_llvm::aot::{self, Emit};
use reformc_backend_llvm::WeightsMode;
use reformc_frontend::lower::LshSource;
use std::path::Path;
use std::process::Command;

fn case(name: &str) -> Case {
    Case::load(&fixture(name))
}

const C_PROGRAM: &str = r#"
#include "model.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* usage: prog WEIGHTS IDS.bin B L OUT.bin */
int main(int argc, char** argv) {
  if (argc != 6) return 90;
  const char* sig = reformc_model_signature();
  if (!sig || sig[0] != '{' || !strstr(sig, "\"variants\"")) return 91;
  /* The default, spelled out: NaN/Inf weights are refused at load. */
  reformc_model_allow_nonfinite_weights(0);
  int64_t b = atoll(argv[3]), l = atoll(argv[4]);
  int64_t* ids = malloc(sizeof(int64_t) * b * l);
  FILE* f = fopen(argv[2], "rb");
  if (!f || fread(ids, sizeof(int64_t), b * l, f) != (size_t)(b * l)) return 92;
  fclose(f);
  reformc_tensor in[2], out;
  int64_t shape[2] = {b, l};
  if (reformc_tensor_init(&in[0], REFORMC_I64, 2, shape, ids) != REFORMC_OK) return 93;
  /* NULL mask data: no padding. */
  if (reformc_tensor_init(&in[1], REFORMC_I64, 2, shape, NULL) != REFORMC_OK) return 94;
  /* Before weights are loaded: an error code and a message, no crash. */
  int rc = reformc_model_run(in, 2, &out, 1);
  if (rc != REFORMC_ERR_NO_WEIGHTS || out.data != NULL || strlen(reformc_model_last_error()) == 0) return 95;
  if (reformc_model_load_weights("/nonexistent.safetensors") != REFORMC_ERR_WEIGHTS_IO) return 96;
  if (reformc_model_load_weights(argv[1]) != REFORMC_OK) {
    fprintf(stderr, "%s\n", reformc_model_last_error());
    return 97;
  }
  /* Bad calls. */
  if (reformc_model_run(in, 2, NULL, 1) != REFORMC_ERR_ARGUMENT) return 98;
  in[0].dtype = REFORMC_F32;
  rc = reformc_model_run(in, 2, &out, 1);
  if (rc != REFORMC_ERR_DTYPE) { fprintf(stderr, "rc=%d %s\n", rc, reformc_model_last_error()); return 99; }
  in[0].dtype = REFORMC_I64;
  rc = reformc_model_run(in, 2, &out, 1);
  if (rc != REFORMC_OK) {
    fprintf(stderr, "run: %s\n", reformc_model_last_error());
    return 100;
  }
  if (out.dtype != REFORMC_F32 || out.rank != 3 || out.shape[0] != b || out.shape[1] != l || !out.owns_data) return 101;
  int64_t n = out.shape[0] * out.shape[1] * out.shape[2];
  /* Counts beyond every signature: an error, no input past in[1] is read. */
  reformc_tensor spare;
  if (reformc_model_run(in, 1000000, &spare, 1) != REFORMC_ERR_ARGUMENT
      || !strstr(reformc_model_last_error(), "more than any compiled signature takes")) return 110;
  if (reformc_model_run(in, 2, &spare, 7) != REFORMC_ERR_ARGUMENT) return 111;
  if (reformc_tensor_init(&spare, 77, 2, shape, ids) != REFORMC_ERR_DTYPE) return 112;
  /* Weights read into memory instead of mapped: the same output, bit for bit. */
  if (reformc_set_weights_mode(7) != REFORMC_ERR_ARGUMENT) return 113;
  if (reformc_set_weights_mode(REFORMC_WEIGHTS_READ) != REFORMC_OK) return 114;
  if (reformc_model_load_weights(argv[1]) != REFORMC_OK) return 115;
  if (reformc_model_run(in, 2, &spare, 1) != REFORMC_OK) return 116;
  if (memcmp(spare.data, out.data, sizeof(float) * n) != 0) return 117;
  reformc_tensor_release(&spare);
  reformc_set_weights_mode(REFORMC_WEIGHTS_MMAP);
  f = fopen(argv[5], "wb");
  if (!f || fwrite(out.data, sizeof(float), n, f) != (size_t)n) return 102;
  fclose(f);
  printf("%lld %lld %lld\n", (long long)out.shape[0], (long long)out.shape[1], (long long)out.shape[2]);
  reformc_tensor_release(&out);
  if (out.data != NULL) return 103;
  reformc_model_unload_weights();
  free(ids);
  return 0;
}
"#;

#[test]
fn c_program_against_model_h_and_the_shared_library() {
    let dir = scratch("c_abi");
    let case = case("noncausal_local_only");
    let (report, link) = shared_library(&dir, &case, false);
    let so = dir.join("libmodel.so");
    assert!(report.written.contains(&dir.join("model.h")));
    let header = std::fs::read_to_string(dir.join("model.h")).unwrap();
    assert!(header.contains("typedef struct reformc_tensor"));
    assert!(header.contains("REFORMC_ERR_WEIGHTS_MISMATCH"));
    // Only the documented entry points are exported.
    let nm = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&so)
        .output();
    if let Ok(nm) = nm {
        let text = String::from_utf8_lossy(&nm.stdout);
        let exported: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split_whitespace().nth(2))
            .filter(|s| !s.starts_with('_') && !s.contains('@'))
            .collect();
        for e in &exported {
            assert!(aot::EXPORTS.contains(e), "unexpected export {e}");
        }
        assert!(exported.contains(&"reformc_model_run"));
    }
    let got = c_program_matches(&dir, &case, &link);
    assert!(max_abs_diff(&got, &case.interp(LshSource::Seeded)) <= 1e-4);
}

/// `case` compiled into `dir/libmodel.so` (weights loaded at run time; GEMMs
/// in bf16 when `bf16`), and the arguments that link a program to it.
fn shared_library(dir: &Path, case: &Case, bf16: bool) -> (aot::CompileReport, [String; 2]) {
    let so = dir.join("libmodel.so");
    let mut options = case.options(None);
    options.bf16 = bf16;
    let report = aot::compile(
        &case.variants(),
        &options,
        &WeightsMode::Runtime,
        Emit::Lib,
        &so,
        None,
    )
    .unwrap();
    let link = [
        so.display().to_string(),
        format!("-Wl,-rpath,{}", dir.display()),
    ];
    (report, link)
}

/// Compiles the C `source` (warnings are errors, `-I dir` for model.h) into
/// `dir/prog`, linking `link` and the runtime's native libraries.
fn build_c(dir: &Path, source: &str, link: &[String]) -> std::path::PathBuf {
    let src = dir.join("main.c");
    std::fs::write(&src, source).unwrap();
    let prog = dir.join("prog");
    let cc = Command::new(aot::cc())
        .args(["-std=c99", "-Wall", "-Werror", "-o"])
        .arg(&prog)
        .arg(&src)
        .arg(format!("-I{}", dir.display()))
        .args(link)
        .args(aot::NATIVE_LIBS)
        .output()
        .unwrap();
    assert!(
        cc.status.success(),
        "{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    prog
}

/// Builds `C_PROGRAM` with `link` (after the source), runs it on `case`'s
/// ids, checks the logits against the reference and returns them.
fn c_program_matches(dir: &Path, case: &Case, link: &[String]) -> ArrayD<f64> {
    let prog = build_c(dir, C_PROGRAM, link);
    let ids_bin = dir.join("ids.bin");
    let bytes: Vec<u8> = case.ids.iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(&ids_bin, bytes).unwrap();
    let out_bin = dir.join("out.bin");
    let (b, l) = (case.ids.shape()[0], case.ids.shape()[1]);
    let args = [
        case.dir.join("model.safetensors").display().to_string(),
        ids_bin.display().to_string(),
        b.to_string(),
        l.to_string(),
        out_bin.display().to_string(),
    ];
    let res = run(&prog, &args);
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let floats: Vec<f64> = std::fs::read(&out_bin)
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
        .collect();
    let reference = case.reference_f64();
    let got = ArrayD::from_shape_vec(IxDyn(reference.shape()), floats).unwrap();
    assert!(max_abs_diff(&got, &reference) <= 1e-4);
    got
}

#[test]
fn c_programs_link_the_static_archive_or_the_object_and_its_runtime() {
    let dir = scratch("c_static");
    let case = case("noncausal_local_only");
    let variants = case.variants();
    let compile = |emit: Emit, out: &Path| {
        aot::compile(
            &variants,
            &case.options(None),
            &WeightsMode::Runtime,
            emit,
            out,
            None,
        )
        .unwrap()
        .written
    };
    let lib = dir.join("libtiny.a");
    assert_eq!(
        compile(Emit::Staticlib, &lib),
        [lib.clone(), dir.join("model.h")]
    );
    let _ = c_program_matches(&dir, &case, &[lib.display().to_string()]);
    let obj = dir.join("tiny.o");
    let rt = dir.join(aot::RUNTIME_ARCHIVE);
    assert_eq!(
        compile(Emit::Obj, &obj),
        [obj.clone(), rt.clone(), dir.join("model.h")]
    );
    c_program_matches(
        &dir,
        &case,
        &[obj.display().to_string(), rt.display().to_string()],
    );
}

/// Two prefixed models in one C program: each answers for itself.
const TWO_MODELS: &str = r#"#include <stdio.h>
#include "a/model.h"
#include "b/model.h"

int main(void) {
  int64_t shape[2] = {1, 3};
  int64_t data[3] = {0, 1, 2};
  reformc_tensor t;
  if (alpha_tensor_init(&t, REFORMC_I64, 2, shape, data) != 0 || t.strides[0] != 3) return 3;
  if (beta_set_weights_mode(7) != REFORMC_ERR_ARGUMENT) return 4;
  printf("%s\n%s\n", alpha_model_signature(), beta_model_signature());
  return 0;
}
"#;

#[test]
fn prefixed_libraries_link_together() {
    let dir = scratch("two_models");
    let mut link = Vec::new();
    for (prefix, fixture) in [("alpha", "noncausal_local_only"), ("beta", "causal_lsh_r1")] {
        let case = case(fixture);
        let sub = dir.join(if prefix == "alpha" { "a" } else { "b" });
        std::fs::create_dir_all(&sub).unwrap();
        let so = sub.join(format!("lib{prefix}.so"));
        let mut opts = case.options(None);
        opts.symbol_prefix = Some(prefix.into());
        aot::compile(
            &case.variants(),
            &opts,
            &WeightsMode::Runtime,
            Emit::Lib,
            &so,
            None,
        )
        .unwrap();
        let header = std::fs::read_to_string(sub.join("model.h")).unwrap();
        assert!(
            header.contains(&format!("int32_t {prefix}_model_run(")),
            "{header}"
        );
        assert!(
            !header.contains("reformc_model_run"),
            "every export is renamed"
        );
        let nm = Command::new("nm")
            .args(["-D", "--defined-only"])
            .arg(&so)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&nm.stdout);
        let exported: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split_whitespace().nth(2))
            .collect();
        for e in aot::EXPORTS {
            let want = reformc_backend_llvm::abi::prefixed(e, prefix);
            assert!(
                exported.contains(&want.as_str()),
                "{want} not exported: {text}"
            );
            assert!(!exported.contains(e), "{e} still exported");
        }
        link.push(so.display().to_string());
        link.push(format!("-Wl,-rpath,{}", sub.display()));
    }
    // Both headers define the shared `reformc_tensor` once.
    let prog = build_c(&dir, TWO_MODELS, &link);
    let res = run(&prog, &[]);
    assert!(res.status.success(), "exit {:?}", res.status.code());
    let out = String::from_utf8_lossy(&res.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].contains("noncausal_local_only"), "{}", lines[0]);
    assert!(lines[1].contains("causal_lsh_r1"), "{}", lines[1]);
}

#[test]
fn executable_with_embedded_weights_needs_no_weights_file() {
    let dir = scratch("embed");
    let case = case("causal_mixed_r2");
    let variants = case.variants();
    let exe = dir.join("model");
    aot::compile(
        &variants,
        &case.options(None),
        &case.embedded(&variants),
        Emit::Exe,
        &exe,
        Some(&case.exe_info(None)),
    )
    .unwrap();
    let got = case.run_exe(&exe, &dir, &[]);
    assert!(max_abs_diff(&got, &case.reference_f64()) <= 1e-4);
    // --weights still overrides the embedded ones (and is checked).
    let mut args = case.exe_args(&dir);
    args.extend(["--weights".into(), "/nonexistent.safetensors".into()]);
    let res = run(&exe, &args);
    assert_eq!(res.status.code(), Some(2));
}

fn expect_failure(exe: &Path, args: &[String], needle: &str) {
    let res = run(exe, args);
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert_eq!(
        res.status.code(),
        Some(2),
        "{args:?}: expected exit 2, stderr: {stderr}"
    );
    assert!(
        stderr.starts_with("error: ") && stderr.contains(needle),
        "{args:?}: expected a message containing {needle:?}, got: {stderr}"
    );
}

#[test]
fn bad_inputs_to_the_executable_fail_cleanly() {
    let dir = scratch("bad_inputs");
    let case = case("causal_mixed_padded");
    let exe = case.compile_exe(&dir);
    let s = |p: &Path| p.display().to_string();
    let out = s(&dir.join("out.npy"));
    let ids = s(&case.dir.join("input_ids.npy"));
    let (b, l) = (case.ids.shape()[0], case.ids.shape()[1]);
    // The executable's arguments: `--input INPUT --output out.npy`, then `extra`.
    let io = |input: String, extra: &[String]| {
        [
            vec!["--input".into(), input, "--output".into(), out.clone()],
            extra.to_vec(),
        ]
        .concat()
    };
    // The good run first.
    let res = run(&exe, &io(ids.clone(), &[]));
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    // Wrong dtype of the ids.
    let f = dir.join("float_ids.npy");
    write(&f, &case.ids.mapv(|x| x as f32));
    expect_failure(&exe, &io(s(&f), &[]), "expected an int64 or int32 array");
    // Out-of-range id.
    let mut bad = case.ids.clone();
    bad[[0, 3]] = case.spec.vocab_size as i64;
    let f = dir.join("big_id.npy");
    write(&f, &bad);
    expect_failure(
        &exe,
        &io(s(&f), &[]),
        "token id 48 at [0, 3] is out of range",
    );
    let mut neg = case.ids.clone();
    neg[[0, 0]] = -1;
    write(&f, &neg);
    expect_failure(&exe, &io(s(&f), &[]), "out of range");
    // Rank 1 ids, empty ids, not an npy file, missing file.
    let f = dir.join("rank1.npy");
    write(&f, &ArrayD::<i64>::zeros(IxDyn(&[5])));
    expect_failure(&exe, &io(s(&f), &[]), "rank-2");
    write(&f, &ArrayD::<i64>::zeros(IxDyn(&[0, 5])));
    expect_failure(&exe, &io(s(&f), &[]), "non-empty");
    let f = dir.join("garbage.npy");
    std::fs::write(&f, b"not numpy at all").unwrap();
    expect_failure(&exe, &io(s(&f), &[]), "bad magic");
    expect_failure(&exe, &io(s(&dir.join("missing.npy")), &[]), "cannot open");
    // Too long for the position embeddings.
    let f = dir.join("long.npy");
    write(
        &f,
        &ArrayD::<i64>::zeros(IxDyn(&[1, case.max_len() as usize + 1])),
    );
    expect_failure(&exe, &io(s(&f), &[]), "exceeds the compiled maximum");
    // Mask of the wrong shape.
    let f = dir.join("mask.npy");
    write(&f, &ArrayD::<i64>::ones(IxDyn(&[b, l + 1])));
    expect_failure(
        &exe,
        &io(ids.clone(), &["--attention-mask".into(), s(&f)]),
        "attention mask: expected shape",
    );
    // Buckets and rotations of the wrong shape.
    let f = dir.join("buckets.npy");
    write(&f, &ArrayD::<i64>::zeros(IxDyn(&[2, b, 2, 7])));
    expect_failure(
        &exe,
        &io(ids.clone(), &["--lsh-buckets".into(), s(&f)]),
        "LSH buckets: expected shape",
    );
    let f = dir.join("rot.npy");
    write(&f, &ArrayD::<f64>::zeros(IxDyn(&[2, 2, 16, 2, 4])));
    expect_failure(
        &exe,
        &io(ids.clone(), &["--lsh-rotations".into(), s(&f)]),
        "float32",
    );
    // Missing weights file, truncated safetensors, another model's weights.
    expect_failure(
        &exe,
        &io(
            ids.clone(),
            &["--weights".into(), s(&dir.join("nope.safetensors"))],
        ),
        "cannot open the weights file",
    );
    let full = std::fs::read(case.dir.join("model.safetensors")).unwrap();
    let f = dir.join("truncated.safetensors");
    std::fs::write(&f, &full[..full.len() - 100]).unwrap();
    expect_failure(
        &exe,
        &io(ids.clone(), &["--weights".into(), s(&f)]),
        "truncated file",
    );
    std::fs::write(&f, &full[..5]).unwrap();
    expect_failure(
        &exe,
        &io(ids.clone(), &["--weights".into(), s(&f)]),
        "not a safetensors file",
    );
    let other = common::root().join("tests/fixtures/noncausal_local_only/model.safetensors");
    expect_failure(
        &exe,
        &io(ids.clone(), &["--weights".into(), s(&other)]),
        "tensor `",
    );
    // Flags.
    expect_failure(
        &exe,
        &["--output".into(), out.clone()],
        "--input IDS.npy is required",
    );
    expect_failure(
        &exe,
        &io(ids.clone(), &["--threads".into(), "x".into()]),
        "--threads",
    );
    expect_failure(&exe, &["--frobnicate".into()], "unknown argument");
    // An unwritable output.
    let res = run(
        &exe,
        &[
            "--input".into(),
            ids.clone(),
            "--output".into(),
            "/nonexistent/dir/out.npy".into(),
        ],
    );
    assert_ne!(res.status.code(), Some(0));
    // --help and --signature succeed.
    let res = run(&exe, &["--help".into()]);
    assert!(res.status.success() && String::from_utf8_lossy(&res.stdout).contains("--lsh-buckets"));
    let res = run(&exe, &["--signature".into()]);
    let sig: serde_json::Value = serde_json::from_slice(&res.stdout).unwrap();
    assert_eq!(sig["variants"].as_array().unwrap().len(), 3);
}

#[test]
fn text_and_object_artifacts() {
    let dir = scratch("emit");
    let case = case("causal_lsh_r1");
    let variants = case.variants();
    let opts = case.options(None);
    for (emit, name) in [(Emit::Llvm, "m.ll"), (Emit::Asm, "m.s"), (Emit::Obj, "m.o")] {
        let out = dir.join(name);
        aot::compile(&variants, &opts, &WeightsMode::Runtime, emit, &out, None).unwrap();
        assert!(out.metadata().unwrap().len() > 1000, "{name}");
    }
    let ll = std::fs::read_to_string(dir.join("m.ll")).unwrap();
    assert!(ll.contains("define i32 @reformc_model_run("));
    assert!(ll.contains("\"target-cpu\""));
    assert!(ll.contains("@rc_lsh_attention_f32"));
    let spec = reformc_backend_llvm::target::TargetSpec::host();
    if spec.has_avx512() {
        let asm = std::fs::read_to_string(dir.join("m.s")).unwrap();
        assert!(
            asm.contains("zmm"),
            "AVX-512 host, but no zmm register in the assembly"
        );
    }
    // A named CPU.
    let mut generic = opts.clone();
    generic.target = reformc_backend_llvm::target::TargetSpec::named("x86-64-v2");
    let out = dir.join("generic.s");
    aot::compile(
        &variants,
        &generic,
        &WeightsMode::Runtime,
        Emit::Asm,
        &out,
        None,
    )
    .unwrap();
    let asm = std::fs::read_to_string(&out).unwrap();
    assert!(!asm.contains("zmm") && !asm.contains("ymm"));
    // An unknown CPU is an error, not a crash.
    let mut bad = opts.clone();
    bad.target = reformc_backend_llvm::target::TargetSpec::named("no-such-cpu");
    let r = aot::compile(
        &variants,
        &bad,
        &WeightsMode::Runtime,
        Emit::Obj,
        &dir.join("x.o"),
        None,
    );
    assert!(r
        .unwrap_err()
        .to_string()
        .contains("unknown or 32-bit CPU `no-such-cpu`"));
}

/// `weights` with `value` at flat index `index` of the f32 tensor `name`.
fn poke_f32(weights: &[u8], name: &str, index: usize, value: f32) -> Vec<u8> {
    let n = u64::from_le_bytes(weights[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&weights[8..8 + n]).unwrap();
    let begin = header[name]["data_offsets"][0].as_u64().unwrap() as usize;
    let at = 8 + n + begin + 4 * index;
    let mut out = weights.to_vec();
    out[at..at + 4].copy_from_slice(&value.to_le_bytes());
    out
}

#[test]
fn garbage_values_to_the_executable_are_refused() {
    let dir = scratch("garbage_values");
    let case = case("causal_mixed_r2");
    let exe = case.compile_exe(&dir);
    let s = |p: &Path| p.display().to_string();
    let out = s(&dir.join("out.npy"));
    let ids = s(&case.dir.join("input_ids.npy"));
    let io = |extra: &[String]| {
        [
            vec![
                "--input".into(),
                ids.clone(),
                "--output".into(),
                out.clone(),
            ],
            extra.to_vec(),
        ]
        .concat()
    };
    // NaN / Inf weights: refused, or a warning with --allow-nonfinite-weights.
    let emb = "reformer.embeddings.word_embeddings.weight";
    let full = std::fs::read(case.dir.join("model.safetensors")).unwrap();
    let f = dir.join("nan.safetensors");
    for (value, shown) in [(f32::NAN, "NaN"), (f32::INFINITY, "inf")] {
        std::fs::write(&f, poke_f32(&full, emb, 9, value)).unwrap();
        let w = ["--weights".to_string(), s(&f)];
        expect_failure(
            &exe,
            &io(&w),
            &format!("non-finite value {shown} at flat index 9"),
        );
        let res = run(
            &exe,
            &io(&[w.to_vec(), vec!["--allow-nonfinite-weights".into()]].concat()),
        );
        let stderr = String::from_utf8_lossy(&res.stderr);
        assert!(res.status.success(), "{stderr}");
        assert!(
            stderr.contains("warning") && stderr.contains(emb),
            "{stderr}"
        );
    }
    // The recorded buckets pass; ids outside their round's range do not.
    let good = case.dir.join("lsh_buckets.npy");
    let res = run(&exe, &io(&["--lsh-buckets".into(), s(&good)]));
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let f = dir.join("buckets.npy");
    for (index, value) in [(3usize, 1i64 << 62), (4, -1), (70, 3)] {
        let mut b = case.buckets();
        b.as_slice_mut().unwrap()[index] = value;
        write(&f, &b);
        expect_failure(
            &exe,
            &io(&["--lsh-buckets".into(), s(&f)]),
            &format!("bucket id {value} at flat index {index}"),
        );
    }
    // Non-finite rotations.
    let mut r: ArrayD<f32> = read(&case.dir.join("lsh_rotations.npy"));
    r.as_slice_mut().unwrap()[11] = f32::NEG_INFINITY;
    let f = dir.join("rot.npy");
    write(&f, &r);
    expect_failure(
        &exe,
        &io(&["--lsh-rotations".into(), s(&f)]),
        "non-finite value -inf at flat index 11",
    );
    // A thread count the runtime cannot use.
    expect_failure(
        &exe,
        &io(&["--threads".into(), "100000".into()]),
        "0..=4096",
    );
}

const RELOAD_PROGRAM: &str = r#"
#include "model.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int run(reformc_tensor* in, reformc_tensor* out) {
  int rc = reformc_model_run(in, 2, out, 1);
  if (rc != REFORMC_OK) fprintf(stderr, "run: %s\n", reformc_model_last_error());
  return rc;
}

static int load(const char* path) {
  int rc = reformc_model_load_weights(path);
  if (rc != REFORMC_OK) fprintf(stderr, "load: %s\n", reformc_model_last_error());
  return rc;
}

/* usage: prog A.safetensors B.safetensors IDS.bin B L OUT.bin
   Writes the logits of A (first run) then of B. */
int main(int argc, char** argv) {
  if (argc != 7) return 90;
  int64_t b = atoll(argv[4]), l = atoll(argv[5]);
  int64_t* ids = malloc(sizeof(int64_t) * b * l);
  FILE* f = fopen(argv[3], "rb");
  if (!f || fread(ids, sizeof(int64_t), b * l, f) != (size_t)(b * l)) return 91;
  fclose(f);
  reformc_tensor in[2], a1, a2, bo, a3;
  int64_t shape[2] = {b, l};
  if (reformc_tensor_init(&in[0], REFORMC_I64, 2, shape, ids) != REFORMC_OK) return 92;
  if (reformc_tensor_init(&in[1], REFORMC_I64, 2, shape, NULL) != REFORMC_OK) return 93;
  if (load(argv[1]) || run(in, &a1) || run(in, &a2)) return 94;
  size_t bytes = sizeof(float) * a1.shape[0] * a1.shape[1] * a1.shape[2];
  /* The second run packs no weight again: the same bits. */
  if (memcmp(a1.data, a2.data, bytes) != 0) return 120;
  /* New weights, most likely mapped at the old address: nothing packed
     from the old ones may be used. */
  reformc_model_unload_weights();
  if (load(argv[2]) || run(in, &bo)) return 95;
  if (memcmp(a1.data, bo.data, bytes) == 0) return 121;
  /* Loading over loaded weights (no unload) releases them too. */
  if (load(argv[1]) || run(in, &a3)) return 96;
  if (memcmp(a1.data, a3.data, bytes) != 0) return 122;
  f = fopen(argv[6], "wb");
  if (!f || fwrite(a1.data, 1, bytes, f) != bytes || fwrite(bo.data, 1, bytes, f) != bytes) return 97;
  fclose(f);
  reformc_tensor_release(&a1);
  reformc_tensor_release(&a2);
  reformc_tensor_release(&bo);
  reformc_tensor_release(&a3);
  reformc_model_unload_weights();
  free(ids);
  return 0;
}
"#;

/// The runtime keeps bf16 weights packed across runs
/// (`reformc_runtime::prepack`) for mapped weights files. Unloading or
/// replacing the weights must drop those copies: a new file mapped at the old
/// address gets its own results, the same bits as a process that only ever
/// loaded it.
#[test]
fn reloaded_weights_never_reuse_weights_packed_from_the_old_ones() {
    let dir = scratch("reload_weights");
    let case = case("noncausal_local_only");
    let (_, link) = shared_library(&dir, &case, true);
    let prog = build_c(&dir, RELOAD_PROGRAM, &link);
    let a = case.dir.join("model.safetensors");
    let full = std::fs::read(&a).unwrap();
    let name = "reformer.encoder.layers.0.attention.output.dense.weight";
    let b = dir.join("b.safetensors");
    std::fs::write(&b, poke_f32(&full, name, 5, 2.5)).unwrap();
    let ids_bin = dir.join("ids.bin");
    let bytes: Vec<u8> = case.ids.iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(&ids_bin, bytes).unwrap();
    let (bs, l) = (case.ids.shape()[0], case.ids.shape()[1]);
    let outputs = |first: &Path, second: &Path, tag: &str| {
        let out = dir.join(format!("out_{tag}.bin"));
        let s = |p: &Path| p.display().to_string();
        let args = [
            s(first),
            s(second),
            s(&ids_bin),
            bs.to_string(),
            l.to_string(),
            s(&out),
        ];
        let res = run(&prog, &args);
        assert!(
            res.status.success(),
            "exit {:?}: {}",
            res.status.code(),
            String::from_utf8_lossy(&res.stderr)
        );
        let all = std::fs::read(&out).unwrap();
        let half = all.len() / 2;
        (all[..half].to_vec(), all[half..].to_vec())
    };
    let (a_first, b_after_a) = outputs(&a, &b, "ab");
    let (b_first, a_after_b) = outputs(&b, &a, "ba");
    assert_eq!(b_after_a, b_first, "B after A equals B in a fresh process");
    assert_eq!(a_after_b, a_first, "A after B equals A in a fresh process");
    assert_ne!(a_first, b_first);
}
