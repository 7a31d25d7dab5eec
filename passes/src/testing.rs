//! Test helpers: start => goal checks and interpreter-based equivalence on
//! random tensors with random small shapes.

use crate::pass::{Pass, PassOptions};
use ndarray::{ArrayD, IxDyn};
use reformc_interp::Tensor;
use reformc_ir::{parse, print, DType, Dim, DimEnv, Graph, OpKind};
use std::collections::{BTreeMap, BTreeSet};

/// SplitMix64: a tiny deterministic generator.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    pub fn float(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Parses, verifies and prints `text` (normalizing value numbers).
pub fn normalize(text: &str) -> String {
    let g = parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    reformc_ir::verify(&g).unwrap_or_else(|e| panic!("{e}\n{text}"));
    print(&g)
}

/// Symbols of the graph's source types (inputs and weights).
fn source_symbols(g: &Graph) -> BTreeSet<String> {
    let mut s = BTreeSet::new();
    for v in g.walk() {
        let n = g.node(v);
        if matches!(n.op.kind, OpKind::Input | OpKind::Weight) {
            for d in &n.ty.shape {
                if let Dim::Sym(x) = d {
                    s.insert(x.clone());
                }
            }
        }
    }
    s
}

/// Random sizes in 1..=max for every symbol of the sources.
pub fn random_env(g: &Graph, rng: &mut Rng, max: u64) -> DimEnv {
    source_symbols(g)
        .into_iter()
        .map(|s| (s, 1 + rng.below(max)))
        .collect()
}

fn random_tensor(dtype: DType, shape: &[usize], rng: &mut Rng) -> Tensor {
    let n: usize = shape.iter().product();
    let s = IxDyn(shape);
    match dtype {
        DType::F32 => Tensor::F32(
            ArrayD::from_shape_vec(s, (0..n).map(|_| rng.float() as f32).collect()).unwrap(),
        ),
        DType::F64 => {
            Tensor::F64(ArrayD::from_shape_vec(s, (0..n).map(|_| rng.float()).collect()).unwrap())
        }
        DType::I64 => Tensor::I64(
            ArrayD::from_shape_vec(s, (0..n).map(|_| rng.below(3) as i64).collect()).unwrap(),
        ),
        DType::I32 => Tensor::I32(
            ArrayD::from_shape_vec(s, (0..n).map(|_| rng.below(3) as i32).collect()).unwrap(),
        ),
        DType::Bool => Tensor::Bool(
            ArrayD::from_shape_vec(s, (0..n).map(|_| rng.below(2) == 1).collect()).unwrap(),
        ),
    }
}

/// Random inputs and weights for `g` under `env`.
pub fn random_bindings(
    g: &Graph,
    env: &DimEnv,
    rng: &mut Rng,
) -> (BTreeMap<String, Tensor>, BTreeMap<String, Tensor>) {
    let (mut inputs, mut weights) = (BTreeMap::new(), BTreeMap::new());
    for v in g.walk() {
        let n = g.node(v);
        let map = if n.op.kind == OpKind::Input {
            &mut inputs
        } else if n.op.kind == OpKind::Weight {
            &mut weights
        } else {
            continue;
        };
        let shape: Vec<usize> =
            n.ty.eval_shape(env)
                .expect("source dims bound")
                .iter()
                .map(|&d| d as usize)
                .collect();
        let name = n.op.str("name").unwrap_or("").to_string();
        map.insert(name, random_tensor(n.ty.dtype, &shape, rng));
    }
    (inputs, weights)
}

/// Relative difference of two output maps (largest over outputs).
pub fn max_rel_diff(a: &BTreeMap<String, Tensor>, b: &BTreeMap<String, Tensor>) -> f64 {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    let mut worst = 0.0f64;
    for (k, x) in a {
        let (x, y) = (x.to_f64(), b[k].to_f64());
        assert_eq!(x.shape(), y.shape(), "output {k}");
        let scale = x.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
        let d = (&x - &y).mapv(f64::abs).fold(0.0f64, |m, &v| m.max(v));
        worst = worst.max(d / scale);
    }
    worst
}

/// Both graphs give the same outputs (within `tol`, relative) on `trials`
/// random shapes and tensors drawn from `seed`.
pub fn assert_equivalent(a: &Graph, b: &Graph, seed: u64, trials: usize, tol: f64) {
    let mut rng = Rng(seed);
    for _ in 0..trials {
        let env = random_env(a, &mut rng, 4);
        let (inputs, weights) = random_bindings(a, &env, &mut rng);
        let x = reformc_interp::run(a, &inputs, &weights)
            .unwrap_or_else(|e| panic!("{e}\n{}", print(a)));
        let y = reformc_interp::run(b, &inputs, &weights)
            .unwrap_or_else(|e| panic!("{e}\n{}", print(b)));
        let d = max_rel_diff(&x, &y);
        assert!(
            d <= tol,
            "outputs differ by {d:e} under {env:?}\n{}\n{}",
            print(a),
            print(b)
        );
    }
}

/// Runs `pass` on `start` and checks that the result prints like `goal`
/// and computes what `start` computes. Returns the pass's notes.
pub fn check_rewrite(pass: &dyn Pass, start: &str, goal: &str) -> Vec<String> {
    let original = parse(start).unwrap_or_else(|e| panic!("{e}\n{start}"));
    reformc_ir::verify(&original).unwrap_or_else(|e| panic!("{e}\n{start}"));
    let mut g = original.clone();
    let notes = pass
        .run(&mut g, &PassOptions::default())
        .unwrap_or_else(|e| panic!("{e}\n{start}"));
    assert_eq!(
        print(&g),
        normalize(goal),
        "start:\n{start}\nnotes: {notes:?}"
    );
    assert_equivalent(&original, &g, 7, 3, 1e-5);
    notes
}
