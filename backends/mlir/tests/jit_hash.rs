//! `random_normal` and `lsh_hash` through reformc's MLIR CPU pipeline against
//! the reference interpreter: samples within 1e-6, bucket ids exactly; and
//! the emitted text through `mlir-opt-22` with upstream dialects only.

use crate::common;

use common::{compare_args, random_f32, random_i64};
use ndarray::{ArrayD, IxDyn};
use reformc_backend_mlir::{emit_module, verify_module, EmitOptions};
use reformc_interp::Tensor;
use reformc_testkit::iree::{Device, Iree};
use reformc_testkit::mlir_module::check_module_text;

/// An `i64[]` seed tensor.
fn seed(s: i64) -> Tensor {
    Tensor::I64(ArrayD::from_elem(IxDyn(&[]), s))
}

/// A graph drawing `random_normal` samples of `shape` for each stream.
fn normals_graph(shape: &str, streams: &[u64]) -> String {
    let mut g = String::from("graph {\n  %0 = input {name=\"seed\"} : i64[]\n");
    for (i, s) in streams.iter().enumerate() {
        g.push_str(&format!(
            "  %{} = random_normal %0 {{stream={s}}} : f32[{shape}]\n",
            i + 1
        ));
    }
    for i in 0..streams.len() {
        g.push_str(&format!("  output \"n{i}\" = %{}\n", i + 1));
    }
    g.push_str("}\n");
    g
}

#[test]
fn random_normal_matches_the_interpreter() {
    let seeds = [0, 7, -1, 0x1234_5678_9ABC_DEF0, i64::MIN];
    for (shape, streams) in [
        ("5", &[0u64][..]),
        ("2,8,4,3", &[0, 1, 5][..]),
        ("3,7,1,5", &[0xFFFF_FFFF, 1 << 33][..]),
        ("1,64,2,16", &[3][..]),
    ] {
        let g = normals_graph(shape, streams);
        for &s in &seeds {
            compare_args(&g, vec![seed(s)], 2e-7);
        }
    }
}

#[test]
fn random_normal_is_not_constant() {
    let g = reformc_ir::parse(&normals_graph("4,33", &[0, 1])).unwrap();
    let out = reformc_backend_mlir::jit_run(&g, &[seed(42)]).unwrap();
    let (a, b) = (out[0].to_f64(), out[1].to_f64());
    assert_ne!(a, b, "streams differ");
    let mean = a.iter().sum::<f64>() / a.len() as f64;
    let var = a.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / a.len() as f64;
    assert!(mean.abs() < 0.3 && (var - 1.0).abs() < 0.4, "{mean} {var}");
}

#[test]
fn random_normal_verifies_with_mlir_opt() {
    let module = check(&normals_graph("2,3,5", &[9]));
    // Ten Philox rounds of two 32x32->64-bit products each, no i64 multiply.
    assert_eq!(module.matches("arith.mului_extended").count(), 20);
    assert!(
        !module
            .lines()
            .any(|l| l.contains("arith.muli") && l.ends_with(": i64")),
        "{module}"
    );
    assert!(module.contains("math.log1p"), "{module}");
}

/// Parses, verifies (melior and `mlir-opt-22` when present) and checks the
/// dialects of the module emitted for `text`.
fn check(text: &str) -> String {
    let g = reformc_ir::parse(text).expect("test graph parses");
    reformc_ir::verify(&g).expect("test graph verifies");
    let module = emit_module(&g, &EmitOptions::default()).expect("graph lowers");
    if let Err(e) = verify_module(&module) {
        panic!("melior rejects the module: {e}\n{module}");
    }
    check_module_text(&module);
    module
}

/// One `lsh_hash` case: shapes, attributes and how the mask looks.
struct Hash {
    batch: usize,
    len: usize,
    heads: usize,
    dim: usize,
    rounds: usize,
    buckets: &'static [usize],
    mask: Mask,
}

/// The mask operand of a case.
#[derive(Clone, Copy, PartialEq)]
enum Mask {
    /// No mask operand.
    None,
    /// An `i64` mask of ones only: no padding bucket.
    Ones,
    /// An `i64` mask with zeros at random places.
    Random,
    /// A `bool` mask with `false` at random places.
    Bool,
}

impl Hash {
    /// The graph text: inputs `qk`, `rot`, `mask`; output the bucket ids.
    fn graph(&self) -> String {
        let half: usize = self.buckets.iter().sum::<usize>() / 2;
        let list: Vec<String> = self.buckets.iter().map(|b| b.to_string()).collect();
        let (mask_in, mask_op) = match self.mask {
            Mask::None => (String::new(), ""),
            Mask::Bool => ("  %2 = input {name=\"mask\"} : bool[B,L]\n".into(), ", %2"),
            _ => ("  %2 = input {name=\"mask\"} : i64[B,L]\n".into(), ", %2"),
        };
        format!(
            "graph {{
  %0 = input {{name=\"qk\"}} : f32[B,L,{w}]
  %1 = input {{name=\"rot\"}} : f32[{h},{d},{r},{half}]
{mask_in}  %3 = lsh_hash %0, %1{mask_op} {{buckets=[{b}], heads={h}, n_hashes={r}}} : i64[B,{h},{r},L]
  output \"buckets\" = %3
}}
",
            w = self.heads * self.dim,
            h = self.heads,
            d = self.dim,
            r = self.rounds,
            b = list.join(",")
        )
    }

    /// The mask tensor of the case, if any.
    fn mask_tensor(&self, seed: u64) -> Option<Tensor> {
        let shape = [self.batch, self.len];
        match self.mask {
            Mask::None => None,
            Mask::Ones => Some(Tensor::I64(ArrayD::from_elem(IxDyn(&shape), 1))),
            Mask::Random => Some(random_i64(&shape, 2, seed)),
            Mask::Bool => {
                let Tensor::I64(m) = random_i64(&shape, 2, seed) else {
                    unreachable!()
                };
                Some(Tensor::Bool(m.mapv(|x| x != 0)))
            }
        }
    }

    /// Compares MLIR and interpreter on random query/keys and rotations.
    fn check_random(&self, seed: u64) {
        let half: usize = self.buckets.iter().sum::<usize>() / 2;
        let mut args = vec![
            random_f32(&[self.batch, self.len, self.heads * self.dim], seed),
            random_f32(&[self.heads, self.dim, self.rounds, half], seed + 100),
        ];
        args.extend(self.mask_tensor(seed + 200));
        compare_args(&self.graph(), args, 0.0);
    }
}

#[test]
fn lsh_hash_single_bucket_factor_matches_exactly() {
    for (batch, len, heads, dim, rounds, buckets, mask) in [
        (1, 5, 1, 4, 1, &[8][..], Mask::None),
        (2, 37, 2, 4, 2, &[8][..], Mask::Random),
        (2, 300, 2, 8, 4, &[16][..], Mask::Random),
        (1, 129, 1, 16, 1, &[64][..], Mask::Ones),
        (2, 64, 2, 6, 2, &[2][..], Mask::Bool),
        // Longer than one tile (at most 1024 positions), the last one partial.
        (2, 1100, 2, 4, 2, &[8][..], Mask::Random),
    ] {
        let case = Hash {
            batch,
            len,
            heads,
            dim,
            rounds,
            buckets,
            mask,
        };
        case.check_random(len as u64);
    }
}

#[test]
fn lsh_hash_factorized_buckets_match_exactly() {
    for (batch, len, heads, dim, rounds, buckets, mask) in [
        (1, 16, 2, 8, 4, &[2, 4][..], Mask::None),
        (2, 131, 2, 4, 4, &[2, 4][..], Mask::Random),
        (2, 40, 1, 8, 2, &[4, 6][..], Mask::Ones),
        (1, 257, 2, 8, 1, &[8, 16][..], Mask::Random),
        (2, 9, 2, 4, 2, &[4, 2, 6][..], Mask::Bool),
        (1, 2085, 1, 4, 1, &[2, 4][..], Mask::Random),
    ] {
        let case = Hash {
            batch,
            len,
            heads,
            dim,
            rounds,
            buckets,
            mask,
        };
        case.check_random(len as u64 + 7);
    }
}

/// Small integers make exact ties common: between rotated coordinates, and
/// between `y` and `-y` (zero vectors), where the first maximum must win.
#[test]
fn lsh_hash_ties_take_the_first_maximum() {
    let ints = |t: Tensor| match t {
        Tensor::I64(a) => Tensor::F32(a.mapv(|x| (x - 1) as f32)),
        _ => unreachable!(),
    };
    for buckets in [&[8][..], &[2, 4][..], &[6, 4][..]] {
        let case = Hash {
            batch: 2,
            len: 150,
            heads: 2,
            dim: 4,
            rounds: 2,
            buckets,
            mask: Mask::Random,
        };
        let half: usize = buckets.iter().sum::<usize>() / 2;
        let mut args = vec![
            ints(random_i64(&[2, 150, 8], 3, 5)),
            ints(random_i64(&[2, 4, 2, half], 3, 6)),
        ];
        args.extend(case.mask_tensor(7));
        compare_args(&case.graph(), args, 0.0);
    }
}

#[test]
fn lsh_hash_verifies_with_mlir_opt() {
    let case = Hash {
        batch: 1,
        len: 1,
        heads: 2,
        dim: 4,
        rounds: 2,
        buckets: &[2, 4],
        mask: Mask::Random,
    };
    let module = check(&case.graph());
    assert!(module.contains("scf.for"), "tiled over the length");
    // The rotation is a contraction IREE recognises: mulf + addf, fusable.
    assert_eq!(module.matches("fastmath<contract>").count(), 2);
    assert!(module.contains("tensor.insert_slice"), "{module}");
}

/// `--lsh-source seeded`: the rotations are drawn in the module from the
/// seed input, then hash the (padded) query/keys under the padded mask.
#[test]
fn seeded_rotations_feed_lsh_hash() {
    let g = "graph {
  %0 = input {name=\"seed\"} : i64[]
  %1 = input {name=\"qk\"} : f32[B,L,16]
  %2 = input {name=\"mask\"} : i64[B,L]
  %3 = random_normal %0 {stream=0} : f32[2,8,4,3]
  %4 = random_normal %0 {stream=1} : f32[2,8,1,32]
  %5 = lsh_hash %1, %3, %2 {buckets=[2,4], heads=2, n_hashes=4} : i64[B,2,4,L]
  %6 = lsh_hash %1, %4, %2 {buckets=[64], heads=2, n_hashes=1} : i64[B,2,1,L]
  output \"b0\" = %5
  output \"b1\" = %6
}
";
    check(g);
    for (s, b, l) in [(0, 1, 8), (11, 2, 24), (-5, 2, 136)] {
        let args = vec![
            seed(s),
            random_f32(&[b, l, 16], s as u64),
            random_i64(&[b, l], 2, s as u64 + 1),
        ];
        compare_args(g, args, 0.0);
    }
}

/// Static batch and length, and `f64` query/keys and rotations.
#[test]
fn lsh_hash_static_shapes_and_f64() {
    let g = "graph {
  %0 = input {name=\"qk\"} : f64[2,45,8]
  %1 = input {name=\"rot\"} : f64[2,4,2,5]
  %2 = input {name=\"mask\"} : i32[2,45]
  %3 = lsh_hash %0, %1, %2 {buckets=[4,6], heads=2, n_hashes=2} : i64[2,2,2,45]
  output \"b\" = %3
}
";
    check(g);
    let f64s = |t: Tensor| Tensor::F64(t.to_f64());
    let Tensor::I64(m) = random_i64(&[2, 45], 2, 3) else {
        unreachable!()
    };
    let args = vec![
        f64s(random_f32(&[2, 45, 8], 1)),
        f64s(random_f32(&[2, 4, 2, 5], 2)),
        Tensor::I32(m.mapv(|x| x as i32)),
    ];
    compare_args(g, args, 0.0);
}

/// Attributes or types the lowering cannot take are `Invalid` errors.
#[test]
fn unsupported_attributes_are_errors() {
    let too_many = "graph {
  %0 = input {name=\"seed\"} : i64[]
  %1 = random_normal %0 {stream=0} : f32[65536,65537]
  output \"n\" = %1
}
";
    let g = reformc_ir::parse(too_many).unwrap();
    let err = emit_module(&g, &EmitOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            reformc_backend_mlir::MlirError::Invalid { value: 1, .. }
        ),
        "{err:?}"
    );
}

/// The rotated coordinates round as the interpreter's matrix product: a
/// fused multiply-add per step of the head dimension, in order, from zero.
/// Column 0 is `-1 + (1 + 2^-12)^2 = 2^-11 + 2^-24` with one rounding (a
/// separate multiply would round the square to `1 + 2^-11` first), column 1
/// is `2^-11 + 2^-24` exactly: a tie that the first column wins only when
/// both round alike.
#[test]
fn lsh_hash_rounds_the_rotation_like_the_interpreter() {
    let g = "graph {
  %0 = input {name=\"qk\"} : f32[B,L,3]
  %1 = input {name=\"rot\"} : f32[1,3,1,2]
  %3 = lsh_hash %0, %1 {buckets=[4], heads=1, n_hashes=1} : i64[B,1,1,L]
  output \"b\" = %3
}
";
    let e = 1.0 + 2f32.powi(-12);
    let v = 2f32.powi(-11) + 2f32.powi(-24);
    let qk = Tensor::F32(ArrayD::from_shape_vec(IxDyn(&[1, 1, 3]), vec![1.0, e, 1.0]).unwrap());
    // rot[0, k, 0, j]: column j = 0 is (-1, e, 0), column 1 is (0, 0, v).
    let rot = vec![-1.0, 0.0, e, 0.0, 0.0, v];
    let rot = Tensor::F32(ArrayD::from_shape_vec(IxDyn(&[1, 3, 1, 2]), rot).unwrap());
    compare_args(g, vec![qk, rot], 0.0);
}

/// The seeded graph through IREE llvm-cpu and Vulkan (llvmpipe): bucket ids
/// equal to the interpreter's, samples within 1e-6 (IREE demotes the f64
/// Box-Muller to f32). IREE comes from `scripts/setup.sh`; without it the
/// test fails saying so.
#[test]
fn seeded_hash_runs_on_iree() {
    let g = "graph {
  %0 = input {name=\"seed\"} : i64[]
  %1 = input {name=\"qk\"} : f32[B,L,16]
  %2 = input {name=\"mask\"} : i64[B,L]
  %3 = random_normal %0 {stream=0} : f32[2,8,4,3]
  %4 = lsh_hash %1, %3, %2 {buckets=[2,4], heads=2, n_hashes=4} : i64[B,2,4,L]
  output \"b\" = %4
  output \"r\" = %3
}
";
    let graph = reformc_ir::parse(g).unwrap();
    let module = check(g);
    let inputs = [
        ("seed", seed(99)),
        ("qk", random_f32(&[2, 300, 16], 5)),
        ("mask", random_i64(&[2, 300], 2, 6)),
    ];
    let map: std::collections::BTreeMap<String, Tensor> = inputs
        .iter()
        .map(|(n, t)| (n.to_string(), t.clone()))
        .collect();
    let none = std::collections::BTreeMap::new();
    let want = reformc_interp::run(&graph, &map, &none).unwrap();
    let args: Vec<Tensor> = inputs.iter().map(|(_, t)| t.clone()).collect();
    let iree = Iree::find();
    for device in [Device::Cpu, Device::Vulkan] {
        let got = iree
            .run_module(&module, device, &args, 2)
            .unwrap_or_else(|e| panic!("{device:?}: {e}"));
        assert_eq!(got[0], want["b"], "{device:?}: bucket ids");
        let (r, w) = (got[1].to_f64(), want["r"].to_f64());
        assert_eq!(r.shape(), w.shape());
        for (g, w) in r.iter().zip(w.iter()) {
            assert!(
                (g - w).abs() <= 1e-6 * w.abs().max(1.0),
                "{device:?}: {g} vs {w}"
            );
        }
    }
}

/// Bucket counts whose ids would not fit an `i64` are `Invalid`, not a panic.
#[test]
fn huge_bucket_counts_are_errors() {
    let g = "graph {
  %0 = input {name=\"qk\"} : f32[B,L,4]
  %1 = input {name=\"rot\"} : f32[1,4,1,2147483648]
  %2 = lsh_hash %0, %1 {buckets=[2147483648,2147483648], heads=1, n_hashes=1} : i64[B,1,1,L]
  output \"b\" = %2
}
";
    let g = reformc_ir::parse(g).unwrap();
    let err = emit_module(&g, &EmitOptions::default()).unwrap_err();
    assert!(err.to_string().contains("too many buckets"), "{err}");
}

/// The training-only fused loss has no lowering: an error naming the op,
/// never invalid MLIR.
#[test]
fn the_fused_lm_loss_is_refused_by_name() {
    let g = "graph {
  %0 = input {name=\"h\"} : f32[B,L,4]
  %1 = input {name=\"w\"} : f32[6,4]
  %2 = input {name=\"labels\"} : i64[B,L]
  %3 = lm_loss %0, %1, %2 {chunk=8} : f32[]
  output \"loss\" = %3
}
";
    let err = emit_module(&reformc_ir::parse(g).unwrap(), &EmitOptions::default()).unwrap_err();
    assert!(
        err.to_string()
            .contains("the MLIR backend has no lowering for op `lm_loss` (value %3)"),
        "{err}"
    );
}
