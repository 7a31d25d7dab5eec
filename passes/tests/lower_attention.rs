//! `local_attention` and `lsh_attention` lowered to tensor ops
//! (`reformc_passes::lower_model::lower_attention_node`) compute what the
//! interpreter computes for the model ops: random graphs holding one such
//! node, run by the interpreter before and after the node is replaced, and
//! the Hugging Face fixtures with every attention node of the frontend's
//! graph replaced.

use crate::common;

use ndarray::{ArrayD, IxDyn};
use reformc_interp::Tensor;
use reformc_ir::{verify, Attr, DType, Dim, Graph, Op, OpKind, TensorType, ValueId};
use reformc_passes::lower_model::lower_attention_node;
use std::collections::BTreeMap;

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One attention case: the op's attributes and the input sizes.
#[derive(Clone, Copy, Debug)]
struct Case {
    batch: usize,
    heads: usize,
    head_dim: usize,
    len: usize,
    chunk: usize,
    before: usize,
    after: usize,
    causal: bool,
    mask: bool,
    /// The mask operand is `bool` rather than `i64`.
    bool_mask: bool,
    rounds: usize,
}

const BASE: Case = Case {
    batch: 2,
    heads: 2,
    head_dim: 3,
    len: 16,
    chunk: 4,
    before: 1,
    after: 0,
    causal: false,
    mask: false,
    bool_mask: false,
    rounds: 1,
};

fn sym_type(dtype: DType, last: Option<usize>) -> TensorType {
    let mut shape = vec![Dim::sym("B"), Dim::sym("L")];
    shape.extend(last.map(|w| Dim::Const(w as u64)));
    TensorType::new(dtype, shape)
}

fn input(g: &mut Graph, name: &str, ty: TensorType) -> ValueId {
    g.add(
        Op::new(OpKind::Input).with("name", Attr::Str(name.into())),
        vec![],
        ty,
    )
}

fn random_tensor(rng: &mut Rng, dtype: DType, shape: &[usize], scale: f64) -> Tensor {
    let n = shape.iter().product();
    let data: Vec<f64> = (0..n).map(|_| rng.unit() * scale).collect();
    Tensor::F64(ArrayD::from_shape_vec(IxDyn(shape), data).unwrap()).cast(dtype)
}

/// A `[B, L]` mask with zeros at the end of the last batch row (HF's padding)
/// and a few elsewhere; with `all_dropped`, the first row is all zeros.
fn random_mask(rng: &mut Rng, c: &Case, all_dropped: bool) -> Tensor {
    let mut m = ArrayD::from_elem(IxDyn(&[c.batch, c.len]), 1i64);
    let tail = (c.len / 3).max(1);
    for i in c.len - tail..c.len {
        m[[c.batch - 1, i]] = 0;
    }
    for _ in 0..c.len / 5 {
        let (b, i) = (
            rng.below(c.batch as u64) as usize,
            rng.below(c.len as u64) as usize,
        );
        m[[b, i]] = 0;
    }
    if all_dropped {
        for i in 0..c.len {
            m[[0, i]] = 0;
        }
    }
    let m = Tensor::I64(m);
    if c.bool_mask {
        m.cast(DType::Bool)
    } else {
        m
    }
}

fn mask_type(c: &Case) -> TensorType {
    sym_type(if c.bool_mask { DType::Bool } else { DType::I64 }, None)
}

/// Runs `g` before and after lowering its single attention node; returns the
/// largest difference relative to the largest output (at least 1).
fn lowered_error(g: &Graph, inputs: &BTreeMap<String, Tensor>) -> f64 {
    verify(g).unwrap();
    let none = BTreeMap::<String, Tensor>::new();
    let want = reformc_interp::run(g, inputs, &none).unwrap()["y"].to_f64();
    let mut lowered = g.clone();
    let v = lowered
        .walk()
        .into_iter()
        .find(|v| {
            matches!(
                lowered.node(*v).op.kind,
                OpKind::LocalAttention | OpKind::LshAttention
            )
        })
        .unwrap();
    lower_attention_node(&mut lowered, v).unwrap();
    verify(&lowered).unwrap_or_else(|e| panic!("{e}\n{}", reformc_ir::print(&lowered)));
    assert!(lowered.walk().iter().all(|v| !matches!(
        lowered.node(*v).op.kind,
        OpKind::LocalAttention | OpKind::LshAttention
    )));
    let got = reformc_interp::run(&lowered, inputs, &none)
        .unwrap_or_else(|e| panic!("{e}\n{}", reformc_ir::print(&lowered)))["y"]
        .to_f64();
    assert_eq!(want.shape(), got.shape());
    let scale = want.iter().fold(1.0f64, |m, x| m.max(x.abs()));
    (&want - &got).iter().fold(0.0f64, |m, d| m.max(d.abs())) / scale
}

fn tolerance(dtype: DType) -> f64 {
    if dtype == DType::F64 {
        1e-12
    } else {
        1e-5
    }
}

fn attention_attrs(op: Op, c: &Case) -> Op {
    op.with("heads", Attr::Int(c.heads as i64))
        .with("chunk", Attr::Int(c.chunk as i64))
        .with("before", Attr::Int(c.before as i64))
        .with("after", Attr::Int(c.after as i64))
        .with_flag("causal", c.causal)
}

fn check_local(c: Case, dtype: DType, seed: u64, all_dropped: bool) {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let w = c.heads * c.head_dim;
    let wv = c.heads * (c.head_dim + 1);
    let mut g = Graph::new();
    let q = input(&mut g, "q", sym_type(dtype, Some(w)));
    let k = input(&mut g, "k", sym_type(dtype, Some(w)));
    let v = input(&mut g, "v", sym_type(dtype, Some(wv)));
    let mut operands = vec![q, k, v];
    let mut inputs = BTreeMap::new();
    for (name, width) in [("q", w), ("k", w), ("v", wv)] {
        let t = random_tensor(&mut rng, dtype, &[c.batch, c.len, width], 2.0);
        inputs.insert(name.to_string(), t);
    }
    if c.mask {
        operands.push(input(&mut g, "mask", mask_type(&c)));
        inputs.insert("mask".into(), random_mask(&mut rng, &c, all_dropped));
    }
    let op = attention_attrs(Op::new(OpKind::LocalAttention), &c)
        .with("scale", Attr::Float(1.0 / (c.head_dim as f64).sqrt()));
    let y = g.add(op, operands, sym_type(dtype, Some(wv)));
    g.set_output("y", y);
    let err = lowered_error(&g, &inputs);
    assert!(err <= tolerance(dtype), "{c:?} {dtype}: error {err:e}");
}

/// Buckets of the form `lsh_hash` makes: round `r` holds ids in
/// `[r * nb, (r + 1) * nb)`; few buckets, so that ties are common.
fn random_buckets(rng: &mut Rng, c: &Case, nb: u64) -> Tensor {
    let shape = [c.batch, c.heads, c.rounds, c.len];
    let mut b = ArrayD::<i64>::zeros(IxDyn(&shape));
    for (ix, x) in b.indexed_iter_mut() {
        *x = (rng.below(nb) + ix[2] as u64 * nb) as i64;
    }
    Tensor::I64(b)
}

/// `lsh_attention` with buckets from `lsh_hash` (random rotations) when
/// `hashed`, else random bucket ids of the same form.
fn check_lsh(c: Case, dtype: DType, seed: u64, hashed: bool) {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let w = c.heads * c.head_dim;
    let nb = 4u64;
    let mut g = Graph::new();
    let qk = input(&mut g, "qk", sym_type(dtype, Some(w)));
    let v = input(&mut g, "v", sym_type(dtype, Some(w)));
    let mut inputs = BTreeMap::new();
    inputs.insert(
        "qk".to_string(),
        random_tensor(&mut rng, dtype, &[c.batch, c.len, w], 2.0),
    );
    inputs.insert(
        "v".to_string(),
        random_tensor(&mut rng, dtype, &[c.batch, c.len, w], 1.0),
    );
    let mask = c.mask.then(|| {
        inputs.insert("mask".into(), random_mask(&mut rng, &c, false));
        input(&mut g, "mask", mask_type(&c))
    });
    let bucket_ty = TensorType::new(
        DType::I64,
        vec![
            Dim::sym("B"),
            Dim::Const(c.heads as u64),
            Dim::Const(c.rounds as u64),
            Dim::sym("L"),
        ],
    );
    let buckets = if hashed {
        let rot_shape = [c.heads, c.head_dim, c.rounds, nb as usize / 2];
        let rot_ty = TensorType::new(
            dtype,
            rot_shape.iter().map(|&d| Dim::Const(d as u64)).collect(),
        );
        let rot = input(&mut g, "rot", rot_ty);
        inputs.insert(
            "rot".into(),
            random_tensor(&mut rng, dtype, &rot_shape, 1.0),
        );
        let op = Op::new(OpKind::LshHash)
            .with("heads", Attr::Int(c.heads as i64))
            .with("n_hashes", Attr::Int(c.rounds as i64))
            .with("buckets", Attr::Ints(vec![nb as i64]));
        let mut operands = vec![qk, rot];
        operands.extend(mask);
        g.add(op, operands, bucket_ty)
    } else {
        inputs.insert("buckets".into(), random_buckets(&mut rng, &c, nb));
        input(&mut g, "buckets", bucket_ty)
    };
    let mut operands = vec![qk, v, buckets];
    operands.extend(mask);
    let op = attention_attrs(Op::new(OpKind::LshAttention), &c);
    let y = g.add(op, operands, sym_type(dtype, Some(w)));
    g.set_output("y", y);
    let err = lowered_error(&g, &inputs);
    assert!(
        err <= tolerance(dtype),
        "{c:?} {dtype} hashed={hashed}: error {err:e}"
    );
}

/// before/after in {0, 1, 2}, causal or not, mask or not.
fn windows() -> Vec<Case> {
    let mut out = vec![];
    for before in 0..3 {
        for after in 0..3 {
            for causal in [false, true] {
                out.push(Case {
                    before,
                    after,
                    causal,
                    mask: (before + after) % 2 == 1,
                    ..BASE
                });
            }
        }
    }
    out
}

#[test]
fn local_attention_matches_the_interpreter_for_every_window() {
    for (i, c) in windows().into_iter().enumerate() {
        check_local(c, DType::F64, i as u64, false);
        check_local(c, DType::F32, i as u64 + 100, false);
    }
}

#[test]
fn local_attention_matches_with_masks_lengths_and_shapes() {
    let mut seed = 1000;
    for len in [1, 3, 4, 8, 20] {
        for (mask, causal) in [(false, false), (true, false), (true, true)] {
            for (batch, heads) in [(1, 1), (3, 2)] {
                let c = Case {
                    len,
                    mask,
                    causal,
                    batch,
                    heads,
                    ..BASE
                };
                for dtype in [DType::F64, DType::F32] {
                    seed += 1;
                    check_local(c, dtype, seed, false);
                }
            }
        }
    }
}

#[test]
fn local_attention_matches_on_a_fully_masked_row() {
    for (len, causal) in [(3, false), (12, false), (12, true)] {
        let c = Case {
            len,
            causal,
            mask: true,
            ..BASE
        };
        check_local(c, DType::F64, 7, true);
        check_local(c, DType::F32, 8, true);
    }
}

#[test]
fn lsh_attention_matches_the_interpreter_for_every_window() {
    for (i, c) in windows().into_iter().enumerate() {
        let c = Case { rounds: 2, ..c };
        check_lsh(c, DType::F64, i as u64, i % 2 == 0);
        check_lsh(c, DType::F32, i as u64 + 100, i % 2 == 1);
    }
}

#[test]
fn lsh_attention_matches_for_rounds_masks_and_lengths() {
    let mut seed = 2000;
    for rounds in [1, 2, 4] {
        for len in [2, 4, 12, 24] {
            for (mask, causal) in [(false, true), (true, false), (true, true)] {
                let c = Case {
                    rounds,
                    len,
                    mask,
                    causal,
                    batch: 1 + (len % 3),
                    ..BASE
                };
                for (dtype, hashed) in [(DType::F64, true), (DType::F32, false)] {
                    seed += 1;
                    check_lsh(c, dtype, seed, hashed);
                }
            }
        }
    }
}

#[test]
fn lsh_attention_matches_with_wide_windows_over_few_chunks() {
    // Fewer chunks than the window: chunks repeat in a window (wrap-around twice).
    for (rounds, len, before, after) in [(1, 8, 2, 1), (2, 4, 2, 2), (1, 4, 2, 0)] {
        let c = Case {
            rounds,
            len,
            before,
            after,
            causal: true,
            mask: true,
            ..BASE
        };
        check_lsh(c, DType::F64, 11, true);
        check_lsh(c, DType::F32, 12, false);
    }
}

#[test]
fn bool_masks_are_lowered_like_integer_ones() {
    for len in [3, 12] {
        let c = Case {
            len,
            mask: true,
            bool_mask: true,
            causal: true,
            rounds: 2,
            ..BASE
        };
        check_local(c, DType::F64, 21, false);
        check_lsh(c, DType::F64, 22, true);
        check_lsh(c, DType::F32, 23, false);
    }
}

#[test]
fn lowering_rejects_a_constant_length_that_is_not_whole_chunks() {
    let mut g = Graph::new();
    let ty = TensorType::new(
        DType::F64,
        vec![Dim::Const(1), Dim::Const(10), Dim::Const(4)],
    );
    let q = input(&mut g, "q", ty.clone());
    let op = attention_attrs(Op::new(OpKind::LocalAttention), &Case { chunk: 4, ..BASE })
        .with("scale", Attr::Float(0.5));
    let y = g.add(op, vec![q, q, q], ty);
    let err = lower_attention_node(&mut g, y).unwrap_err();
    assert!(
        err.contains("length 10 is not a multiple of the chunk length 4"),
        "{err}"
    );
    let not_attention = lower_attention_node(&mut g, q).unwrap_err();
    assert!(
        not_attention.contains("not local or LSH attention"),
        "{not_attention}"
    );
}

/// Every `local_attention` and `lsh_attention` of `g`, regions included.
fn attention_nodes(g: &Graph) -> Vec<ValueId> {
    g.walk()
        .into_iter()
        .filter(|v| {
            matches!(
                g.node(*v).op.kind,
                OpKind::LocalAttention | OpKind::LshAttention
            )
        })
        .collect()
}

/// Whole HF models: the frontend's graph (replaying HF's buckets) with every
/// attention node lowered gives the model op graph's logits, and HF's float64
/// logits within 1e-9 in f64.
#[test]
fn hf_fixtures_agree_with_their_attention_layers_lowered() {
    let mut checked = 0;
    for dir in common::fixtures() {
        let case = common::Case::load(&dir);
        let source = case.replay_source();
        for dtype in [DType::F64, DType::F32] {
            let g = case.graph(dtype, source);
            let want = case.run(&g, source).remove("logits").unwrap().to_f64();
            let mut lowered = g.clone();
            let nodes = attention_nodes(&lowered);
            for v in &nodes {
                lower_attention_node(&mut lowered, *v)
                    .unwrap_or_else(|e| panic!("{}: {e}", case.name));
            }
            verify(&lowered).unwrap_or_else(|e| panic!("{}: {e}", case.name));
            assert!(attention_nodes(&lowered).is_empty());
            let got = case
                .run(&lowered, source)
                .remove("logits")
                .unwrap()
                .to_f64();
            let err = common::max_abs_diff(&got, &want);
            let tol = if dtype == DType::F64 { 1e-10 } else { 1e-4 };
            assert!(
                err <= tol,
                "{} {dtype}: lowered logits differ by {err:e}",
                case.name
            );
            if dtype == DType::F64 {
                let hf = common::max_abs_diff(&got, &case.reference_f64());
                assert!(hf <= 1e-9, "{}: {hf:e} from HF float64", case.name);
                checked += nodes.len();
            }
        }
    }
    assert!(checked > 0, "no fixture has local or LSH layers");
}

/// The lowered graph of a multi-round, masked, causal LSH layer and of a local
/// layer, each lowered and verified.
fn lowered_examples() -> Vec<Graph> {
    let mut out = vec![];
    for kind in [OpKind::LshAttention, OpKind::LocalAttention] {
        let c = Case {
            rounds: 2,
            mask: true,
            causal: true,
            ..BASE
        };
        let mut g = Graph::new();
        let w = c.heads * c.head_dim;
        let x = input(&mut g, "x", sym_type(DType::F32, Some(w)));
        let mask = input(&mut g, "mask", sym_type(DType::I64, None));
        let op = attention_attrs(Op::new(kind), &c);
        let (op, operands) = if kind == OpKind::LshAttention {
            let ty = TensorType::new(
                DType::I64,
                vec![Dim::sym("B"), Dim::Const(2), Dim::Const(2), Dim::sym("L")],
            );
            let buckets = input(&mut g, "buckets", ty);
            (op, vec![x, x, buckets, mask])
        } else {
            (op.with("scale", Attr::Float(0.5)), vec![x, x, x, mask])
        };
        let y = g.add(op, operands, sym_type(DType::F32, Some(w)));
        g.set_output("y", y);
        lower_attention_node(&mut g, y).unwrap();
        verify(&g).unwrap();
        out.push(g);
    }
    out
}

/// O(L * chunk) memory: no value of the lowered graphs has two sequence-like
/// (symbolic, other than the batch) dimensions, so no [L, L] tensor exists.
#[test]
fn lowered_attention_never_has_two_length_dims() {
    for g in lowered_examples() {
        for v in g.walk() {
            let ty = g.ty(v);
            let long = ty
                .shape
                .iter()
                .filter(|d| matches!(d, Dim::Sym(s) if s != "B"))
                .count();
            assert!(long <= 1, "{v}: {ty}\n{}", reformc_ir::print(&g));
        }
    }
}

/// Float values come only from ops with standard derivative rules (gather ->
/// scatter_add, ...), and no float value is turned into an integer one: the
/// integer index paths (sort, positions, masks) carry no gradient.
#[test]
fn lowered_attention_uses_differentiable_ops_on_float_paths() {
    use OpKind::*;
    let float_ops = [
        Input, Constant, Gather, Reshape, Transpose, Mul, Add, Div, Reduce, Rsqrt, Matmul, Select,
        Softmax,
    ];
    for g in lowered_examples() {
        for v in g.walk() {
            let n = g.node(v);
            if n.ty.dtype.is_float() {
                assert!(float_ops.contains(&n.op.kind), "float {v} from `{}`", n.op);
            } else if n.op.kind != Iota {
                // iota reads only its operand's shape.
                for i in &n.inputs {
                    assert!(
                        !g.ty(*i).dtype.is_float(),
                        "{v} = `{}` reads float {i}",
                        n.op
                    );
                }
            }
        }
    }
}

/// The order the training plan uses: the default pipeline first, then the
/// attention nodes it leaves lowered; f32 logits stay within 1e-4 of HF's
/// float64 ones.
#[test]
fn hf_fixtures_after_the_default_pipeline_agree_when_lowered() {
    use reformc_passes::{Instrumentation, PassManager, PassOptions, Pipeline};
    let mut lowered = 0;
    for dir in common::fixtures() {
        let case = common::Case::load(&dir);
        let source = case.replay_source();
        let mut g = case.graph(DType::F32, source);
        let opts = PassOptions {
            seq_len: Some(case.seq_len() as u64),
            batch: Some(case.ids.shape()[0] as u64),
            ..Default::default()
        };
        let quiet = Instrumentation {
            quiet: true,
            ..Default::default()
        };
        let pm = PassManager::new(Pipeline::default_pipeline(), quiet).unwrap();
        pm.run(&mut g, &opts, &mut Vec::new())
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        for v in attention_nodes(&g) {
            lower_attention_node(&mut g, v).unwrap_or_else(|e| panic!("{}: {e}", case.name));
            lowered += 1;
        }
        verify(&g).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let got = case.run(&g, source).remove("logits").unwrap().to_f64();
        let err = common::max_abs_diff(&got, &case.reference_f64());
        assert!(err <= 1e-4, "{}: {err:e} from HF float64", case.name);
    }
    println!("{lowered} attention nodes lowered");
    assert!(
        lowered > 0,
        "the default pipeline left no local or LSH attention"
    );
}
