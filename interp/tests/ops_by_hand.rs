//! Independent checks of the interpreter's tensor ops against values
//! computed by hand: the LLVM backend is tested against the interpreter,
//! so these ops need a reference of their own.

use ndarray::{ArrayD, IxDyn};
use reformc_interp::tensor_ops::{argmax, argsort, gather, matmul, reduce, select, softmax};
use reformc_interp::Tensor;
use reformc_ir::Reduction;

fn a<T: Clone>(shape: &[usize], v: &[T]) -> ArrayD<T> {
    ArrayD::from_shape_vec(IxDyn(shape), v.to_vec()).unwrap()
}

fn close(got: &ArrayD<f64>, want: &[f64]) {
    let g: Vec<f64> = got.iter().copied().collect();
    assert_eq!(g.len(), want.len(), "{g:?} vs {want:?}");
    for (x, y) in g.iter().zip(want) {
        assert!((x - y).abs() <= 1e-12, "{g:?} vs {want:?}");
    }
}

#[test]
fn matmul_2d_and_broadcast_batch() {
    let x = a(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let w = a(&[3, 2], &[1.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
    let y = matmul::<f64>(&x, &w).unwrap();
    assert_eq!(y.shape(), &[2, 2]);
    close(&y, &[4.0, 5.0, 10.0, 11.0]);
    // [2,1,2] x [1,2,1]: batch 2 broadcasts against 1.
    let x = a(&[2, 1, 2], &[1.0, 2.0, 3.0, 4.0]);
    let w = a(&[1, 2, 1], &[10.0, 100.0]);
    let y = matmul::<f64>(&x, &w).unwrap();
    assert_eq!(y.shape(), &[2, 1, 1]);
    close(&y, &[210.0, 430.0]);
    assert!(matmul::<f64>(&x, &a(&[1, 3, 1], &[0.0; 3])).is_err());
}

#[test]
fn gather_takes_along_an_axis() {
    let x = Tensor::F64(a(&[2, 3], &[10.0, 11.0, 12.0, 20.0, 21.0, 22.0]));
    let y = gather(&x, &a(&[2, 2], &[2, 0, 1, 1]), 1).unwrap();
    assert_eq!(y.shape(), &[2, 2]);
    close(&y.to_f64(), &[12.0, 10.0, 21.0, 21.0]);
    let y = gather(&x, &a(&[1, 3], &[1, 0, 1]), 0).unwrap();
    close(&y.to_f64(), &[20.0, 11.0, 22.0]);
    assert!(gather(&x, &a(&[2, 1], &[3, 0]), 1).is_err());
    assert!(gather(&x, &a(&[2, 1], &[-1, 0]), 1).is_err());
}

#[test]
fn argsort_is_stable_and_argmax_takes_the_first_maximum() {
    let x = Tensor::F32(a(&[2, 4], &[3.0, 1.0, 3.0, 0.0, -1.0, -1.0, -2.0, 5.0]));
    assert_eq!(argsort(&x, 1), a(&[2, 4], &[3, 1, 0, 2, 2, 0, 1, 3]));
    assert_eq!(argsort(&x, 0), a(&[2, 4], &[1, 1, 1, 0, 0, 0, 0, 1]));
    assert_eq!(argmax(&x, 1), a(&[2], &[0, 3]));
    assert_eq!(argmax(&x, 0), a(&[4], &[0, 0, 0, 1]));
}

#[test]
fn select_broadcasts_condition_and_operands() {
    let cond = a(&[2, 1], &[true, false]);
    let x = Tensor::F64(a(&[2, 2], &[1.0, 2.0, 3.0, 4.0]));
    let y = Tensor::F64(a(&[2], &[-1.0, -2.0]));
    let z = select(&cond, &x, &y).unwrap();
    assert_eq!(z.shape(), &[2, 2]);
    close(&z.to_f64(), &[1.0, 2.0, -1.0, -2.0]);
    assert!(select(&a(&[3], &[true; 3]), &x, &y).is_err());
}

#[test]
fn reduce_kinds_axes_and_keepdim() {
    let x = a(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    close(
        &reduce::<f64>(&x, Reduction::Sum, &[1], false),
        &[6.0, 15.0],
    );
    close(
        &reduce::<f64>(&x, Reduction::Max, &[0], false),
        &[4.0, 5.0, 6.0],
    );
    close(&reduce::<f64>(&x, Reduction::Mean, &[0, 1], false), &[3.5]);
    let k = reduce::<f64>(&x, Reduction::Sum, &[0], true);
    assert_eq!(k.shape(), &[1, 3]);
    close(&k, &[5.0, 7.0, 9.0]);
    // logsumexp(1, 2, 3) = 3 + ln(1 + e^-1 + e^-2).
    let lse = 3.0 + (1.0 + (-1.0f64).exp() + (-2.0f64).exp()).ln();
    let got = reduce::<f64>(&x, Reduction::LogSumExp, &[1], false);
    assert!((got[[0]] - lse).abs() <= 1e-12, "{got:?} vs {lse}");
}

#[test]
fn softmax_along_each_axis() {
    let x = a(&[2, 2], &[0.0, 2.0_f64.ln(), 1.0, 1.0]);
    close(&softmax::<f64>(&x, 1), &[1.0 / 3.0, 2.0 / 3.0, 0.5, 0.5]);
    let e = 1.0f64.exp();
    close(
        &softmax::<f64>(&x, 0),
        &[
            1.0 / (1.0 + e),
            2.0 / (2.0 + e),
            e / (1.0 + e),
            e / (2.0 + e),
        ],
    );
    // Large inputs must not overflow: the maximum is subtracted first.
    let big = a(&[2], &[1000.0, 1000.0]);
    close(&softmax::<f64>(&big, 0), &[0.5, 0.5]);
}

/// A reshape may introduce one fresh symbol (a number of chunks): the element
/// count gives its value, later uses see it bound, and a count that leaves no
/// whole value is an error that names the symbol.
#[test]
fn reshape_binds_one_fresh_symbol_from_the_element_count() {
    let text = "graph {\n  %0 = input {name=\"x\"} : f64[L,2]\n  %1 = reshape %0 : f64[N,4]\n  %2 = reshape %1 : f64[N,2,2]\n  output \"y\" = %2\n}\n";
    let g = reformc_ir::parse(text).unwrap();
    reformc_ir::verify(&g).unwrap();
    let run = |len: usize| {
        let x: Vec<f64> = (0..len * 2).map(|i| i as f64).collect();
        let mut inputs = std::collections::BTreeMap::new();
        inputs.insert("x".to_string(), Tensor::F64(a(&[len, 2], &x)));
        reformc_interp::run(&g, &inputs, &std::collections::BTreeMap::new())
    };
    let y = run(6).unwrap()["y"].to_f64();
    assert_eq!(y.shape(), &[3, 2, 2]);
    close(&y, &(0..12).map(|i| i as f64).collect::<Vec<_>>());
    let err = run(3).unwrap_err().to_string();
    assert!(err.contains("do not reshape to f64[N,4]"), "{err}");
}
