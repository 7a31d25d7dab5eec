//! Finite-difference checking of the autodiff pass on small f64 graphs.

use ndarray::{ArrayD, IxDyn};
use reformc_ir::{parse, Graph};
use reformc_passes::autodiff::{differentiate, GRAD_PREFIX};
use reformc_tensor::Tensor;
use std::collections::BTreeMap;

/// A deterministic pseudo-random f64 array in [lo, hi).
pub fn random(shape: &[usize], seed: u64, lo: f64, hi: f64) -> ArrayD<f64> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ArrayD::from_shape_fn(IxDyn(shape), |_| {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        lo + (hi - lo) * ((s >> 11) as f64 / (1u64 << 53) as f64)
    })
}

/// The graph `body` (IR text lines defining `%y`-named output "y") with
/// `loss = sum(y * probe)` appended, `probe` an f64 input of y's shape.
pub fn with_probe_loss(text: &str) -> Graph {
    let mut g = parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let (_, y) = g
        .outputs
        .iter()
        .find(|(n, _)| n == "y")
        .cloned()
        .expect("output y");
    let ty = g.ty(y).clone();
    let probe = g.add(
        reformc_ir::Op::new(reformc_ir::OpKind::Input)
            .with("name", reformc_ir::Attr::Str("probe".into())),
        vec![],
        ty.clone(),
    );
    let mut b = reformc_passes::autodiff::Builder::new(&mut g);
    let p = b.mul(y, probe).unwrap();
    let axes: Vec<usize> = (0..ty.rank()).collect();
    let loss = b.reduce(p, "sum", &axes, false).unwrap();
    g.outputs = vec![("loss".into(), loss)];
    reformc_ir::verify(&g).unwrap();
    g
}

/// Runs `g`, returning the scalar loss.
fn loss_of(
    g: &Graph,
    inputs: &BTreeMap<String, Tensor>,
    weights: &BTreeMap<String, Tensor>,
) -> f64 {
    let out = reformc_interp::run(g, inputs, weights).unwrap_or_else(|e| panic!("{e}"));
    out["loss"].to_f64().iter().next().copied().unwrap()
}

/// Checks every weight's gradient from `differentiate` against central
/// differences (step `h`), relative to the largest gradient entry, within `tol`.
pub fn check_gradients(
    g: &Graph,
    inputs: &BTreeMap<String, Tensor>,
    weights: &BTreeMap<String, Tensor>,
    tol: f64,
) {
    let d = differentiate(g, "loss").unwrap_or_else(|e| panic!("{e}\n{}", reformc_ir::print(g)));
    let out = reformc_interp::run(&d, inputs, weights)
        .unwrap_or_else(|e| panic!("{e}\n{}", reformc_ir::print(&d)));
    let l0 = loss_of(g, inputs, weights);
    let l1 = out["loss"].to_f64().iter().next().copied().unwrap();
    assert!(
        (l0 - l1).abs() <= 1e-12 * l0.abs().max(1.0),
        "loss changed: {l0} vs {l1}"
    );
    let h = 1e-6;
    for (name, w) in weights {
        let got = out[&format!("{GRAD_PREFIX}{name}")].to_f64();
        let w = w.to_f64();
        assert_eq!(got.shape(), w.shape(), "gradient shape of {name}");
        let mut want = ArrayD::<f64>::zeros(w.raw_dim());
        for (i, x) in w.iter().enumerate() {
            let mut plus = w.clone();
            let mut minus = w.clone();
            plus.as_slice_mut().unwrap()[i] = x + h;
            minus.as_slice_mut().unwrap()[i] = x - h;
            let mut wp = weights.clone();
            wp.insert(name.clone(), Tensor::F64(plus));
            let lp = loss_of(g, inputs, &wp);
            wp.insert(name.clone(), Tensor::F64(minus));
            let lm = loss_of(g, inputs, &wp);
            want.as_slice_mut().unwrap()[i] = (lp - lm) / (2.0 * h);
        }
        let scale = want.iter().fold(1e-3f64, |a, &b| a.max(b.abs()));
        let err = got
            .iter()
            .zip(want.iter())
            .fold(0.0f64, |a, (x, y)| a.max((x - y).abs()));
        assert!(
            err <= tol * scale,
            "gradient of {name}: max error {err:.3e} (scale {scale:.3e})\ngot  {got}\nwant {want}\n{}",
            reformc_ir::print(&d)
        );
    }
}

/// Random f64 weights for every weight of `g` (values in [lo, hi)).
pub fn random_weights(g: &Graph, seed: u64, lo: f64, hi: f64) -> BTreeMap<String, Tensor> {
    let mut out = BTreeMap::new();
    for (i, (name, v)) in g.weights().into_iter().enumerate() {
        let shape: Vec<usize> = g
            .ty(v)
            .shape
            .iter()
            .map(|d| d.as_const().expect("constant weight shapes") as usize)
            .collect();
        out.insert(
            name.to_string(),
            Tensor::F64(random(&shape, seed + i as u64, lo, hi)),
        );
    }
    out
}
