//! Semantics of the primitive tensor ops (elementwise, reductions, indexing, layout).

use crate::tensor::{each, Real, Tensor};
use ndarray::{concatenate, ArrayD, Axis, Dimension, IxDyn, Slice, Zip};
use reformc_ir::{Activation, BinaryFn, OpKind, Reduction, UnaryFn};

/// numpy broadcast of two shapes.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>, String> {
    let n = a.len().max(b.len());
    (0..n)
        .map(|i| {
            let x = if i + a.len() >= n {
                a[i + a.len() - n]
            } else {
                1
            };
            let y = if i + b.len() >= n {
                b[i + b.len() - n]
            } else {
                1
            };
            match (x, y) {
                (x, y) if x == y => Ok(x),
                (1, y) => Ok(y),
                (x, 1) => Ok(x),
                _ => Err(format!("shapes {a:?} and {b:?} do not broadcast")),
            }
        })
        .collect()
}

fn zip_with<A: Clone, B: Clone, C>(
    a: &ArrayD<A>,
    b: &ArrayD<B>,
    f: impl Fn(A, B) -> C,
) -> Result<ArrayD<C>, String> {
    let shape = broadcast_shape(a.shape(), b.shape())?;
    let av = a.broadcast(IxDyn(&shape)).expect("broadcast checked");
    let bv = b.broadcast(IxDyn(&shape)).expect("broadcast checked");
    Ok(Zip::from(&av)
        .and(&bv)
        .map_collect(|x, y| f(x.clone(), y.clone())))
}

/// An elementwise binary op: arithmetic keeps the dtype, comparisons give
/// `bool` (see [`compare`]).
pub fn binary(op: BinaryFn, a: &Tensor, b: &Tensor) -> Result<Tensor, String> {
    macro_rules! arith {
        ($x:expr, $y:expr, $wrap:path, $max:expr, $min:expr) => {
            Ok($wrap(match op {
                BinaryFn::Add => zip_with($x, $y, |p, q| p + q)?,
                BinaryFn::Sub => zip_with($x, $y, |p, q| p - q)?,
                BinaryFn::Mul => zip_with($x, $y, |p, q| p * q)?,
                BinaryFn::Div => zip_with($x, $y, |p, q| p / q)?,
                BinaryFn::Max => zip_with($x, $y, $max)?,
                BinaryFn::Min => zip_with($x, $y, $min)?,
                BinaryFn::Lt | BinaryFn::Eq => return compare(op, a, b),
            }))
        };
    }
    let name = op_name(op);
    match (a, b) {
        (Tensor::F32(x), Tensor::F32(y)) => arith!(x, y, Tensor::F32, f32::max, f32::min),
        (Tensor::F64(x), Tensor::F64(y)) => arith!(x, y, Tensor::F64, f64::max, f64::min),
        (Tensor::I64(x), Tensor::I64(y)) => {
            if op == BinaryFn::Div && y.iter().any(|&v| v == 0) {
                return Err("integer division by zero".into());
            }
            arith!(x, y, Tensor::I64, i64::max, i64::min)
        }
        (Tensor::I32(x), Tensor::I32(y)) => {
            if op == BinaryFn::Div && y.iter().any(|&v| v == 0) {
                return Err("integer division by zero".into());
            }
            arith!(x, y, Tensor::I32, i32::max, i32::min)
        }
        _ if op.is_comparison() => compare(op, a, b),
        _ => Err(format!(
            "`{name}` needs two numeric operands of one dtype, found {} and {}",
            a.dtype(),
            b.dtype()
        )),
    }
}

/// The op keyword of a binary function (for messages).
fn op_name(op: BinaryFn) -> &'static str {
    OpKind::ALL
        .iter()
        .find(|k| k.binary_fn() == Some(op))
        .map_or("binary", |k| k.name())
}

/// Elementwise comparison `lt` or `eq`, bool result.
pub fn compare(op: BinaryFn, a: &Tensor, b: &Tensor) -> Result<Tensor, String> {
    let (x, y) = (a.to_f64(), b.to_f64());
    if a.dtype() != b.dtype() {
        return Err(format!(
            "`{}` needs operands of one dtype, found {} and {}",
            op_name(op),
            a.dtype(),
            b.dtype()
        ));
    }
    // Integers up to 2^53 compare exactly as f64; larger ids do not occur in models.
    Ok(Tensor::Bool(match op {
        BinaryFn::Lt => zip_with(&x, &y, |p, q| p < q)?,
        BinaryFn::Eq => zip_with(&x, &y, |p, q| p == q)?,
        BinaryFn::Add
        | BinaryFn::Sub
        | BinaryFn::Mul
        | BinaryFn::Div
        | BinaryFn::Max
        | BinaryFn::Min => {
            return Err(format!("`{}` is not a comparison", op_name(op)));
        }
    }))
}

/// An elementwise float function; `act` is the activation of
/// [`UnaryFn::Act`] (ignored by the others).
pub fn unary<T: Real>(op: UnaryFn, act: Activation, x: &ArrayD<T>) -> ArrayD<T> {
    match op {
        UnaryFn::Neg => x.mapv(|v| -v),
        UnaryFn::Exp => x.mapv(T::exp),
        UnaryFn::Log => x.mapv(T::ln),
        UnaryFn::Sqrt => x.mapv(T::sqrt),
        UnaryFn::Rsqrt => x.mapv(|v| T::one() / v.sqrt()),
        UnaryFn::Tanh => x.mapv(T::tanh),
        UnaryFn::Act => x.mapv(|v| crate::nn::activate(act, v)),
    }
}

/// Batched matrix product with broadcast batch dims.
pub fn matmul<T: Real>(a: &ArrayD<T>, b: &ArrayD<T>) -> Result<ArrayD<T>, String> {
    let (ra, rb) = (a.ndim(), b.ndim());
    let (m, k, n) = (a.shape()[ra - 2], a.shape()[ra - 1], b.shape()[rb - 1]);
    if b.shape()[rb - 2] != k {
        return Err(format!(
            "contraction dims differ: {:?} x {:?}",
            a.shape(),
            b.shape()
        ));
    }
    let batch = broadcast_shape(&a.shape()[..ra - 2], &b.shape()[..rb - 2])?;
    let mut sa = batch.clone();
    sa.extend([m, k]);
    let mut sb = batch.clone();
    sb.extend([k, n]);
    let count: usize = batch.iter().product();
    let av = a
        .broadcast(IxDyn(&sa))
        .ok_or("batch dims do not broadcast")?
        // Standard layout: an operand in column-major order (a broadcast
        // elementwise result can be) would not reshape row-major.
        .as_standard_layout()
        .into_owned()
        .into_shape_with_order((count, m, k))
        .map_err(|e| e.to_string())?;
    let bv = b
        .broadcast(IxDyn(&sb))
        .ok_or("batch dims do not broadcast")?
        .as_standard_layout()
        .into_owned()
        .into_shape_with_order((count, k, n))
        .map_err(|e| e.to_string())?;
    let mut out = ndarray::Array3::<T>::zeros((count, m, n));
    for i in 0..count {
        out.index_axis_mut(Axis(0), i)
            .assign(&av.index_axis(Axis(0), i).dot(&bv.index_axis(Axis(0), i)));
    }
    let mut shape = batch;
    shape.extend([m, n]);
    Ok(out
        .into_shape_with_order(IxDyn(&shape))
        .expect("same count"))
}

/// `sum`, `max`, `mean` or `logsumexp` over `axes`.
pub fn reduce<T: Real>(x: &ArrayD<T>, kind: Reduction, axes: &[usize], keepdim: bool) -> ArrayD<T> {
    let mut sorted = axes.to_vec();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    let mut out = x.clone();
    for &a in &sorted {
        out = match kind {
            Reduction::Sum => out.sum_axis(Axis(a)),
            Reduction::Mean => out.mean_axis(Axis(a)).expect("non-empty axis"),
            Reduction::Max => out.fold_axis(Axis(a), T::neg_infinity(), |m, &v| m.max(v)),
            Reduction::LogSumExp => {
                let m = out.fold_axis(Axis(a), T::neg_infinity(), |m, &v| m.max(v));
                let mut s = ArrayD::zeros(m.raw_dim());
                for (lane, (mv, sv)) in out
                    .lanes(Axis(a))
                    .into_iter()
                    .zip(m.iter().zip(s.iter_mut()))
                {
                    *sv = *mv
                        + lane
                            .iter()
                            .fold(T::zero(), |acc, &v| acc + (v - *mv).exp())
                            .ln();
                }
                s
            }
        };
        if keepdim {
            out.insert_axis_inplace(Axis(a));
        }
    }
    out
}

/// Softmax along `axis`.
pub fn softmax<T: Real>(x: &ArrayD<T>, axis: usize) -> ArrayD<T> {
    let mut out = x.clone();
    for mut lane in out.lanes_mut(Axis(axis)) {
        let m = lane.iter().fold(T::neg_infinity(), |a, &v| a.max(v));
        lane.mapv_inplace(|v| (v - m).exp());
        let s = lane.iter().fold(T::zero(), |a, &v| a + v);
        lane.mapv_inplace(|v| v / s);
    }
    out
}

/// `take_along_axis(x, idx, axis)`; an `idx` of rank `k` below `x`'s takes
/// `x`'s axes from `k` on whole: the result is `idx.shape ++ x.shape[k..]`.
///
/// ```
/// use reformc_interp::{tensor_ops::gather, Tensor};
/// use ndarray::{arr1, arr2};
/// let x = Tensor::from(arr2(&[[1.0f32, 2.0], [3.0, 4.0], [5.0, 6.0]]).into_dyn());
/// let rows = gather(&x, &arr1(&[2i64, 0]).into_dyn(), 0).unwrap();
/// assert_eq!(rows.shape(), &[2, 2]);
/// assert_eq!(rows.to_f64().into_raw_vec_and_offset().0, vec![5.0, 6.0, 1.0, 2.0]);
/// ```
pub fn gather(x: &Tensor, idx: &ArrayD<i64>, axis: usize) -> Result<Tensor, String> {
    let n = x.shape()[axis];
    let k = idx.ndim();
    if axis >= k || k > x.shape().len() {
        return Err(format!(
            "gather indices of rank {k} do not fit axis {axis} of a rank-{} operand",
            x.shape().len()
        ));
    }
    if let Some(bad) = idx.iter().find(|&&i| i < 0 || i as usize >= n) {
        return Err(format!(
            "gather index {bad} is out of range for axis {axis} of length {n}"
        ));
    }
    let mut shape = idx.shape().to_vec();
    shape.extend_from_slice(&x.shape()[k..]);
    Ok(each!(x, a => {
        let out = ArrayD::from_shape_fn(IxDyn(&shape), |ix| {
            let mut src = ix.clone();
            src[axis] = idx[&ix.slice()[..k]] as usize;
            a[src]
        });
        Tensor::from(out)
    }))
}

/// The transpose of [`gather`]: zeros of `shape` in `src`'s dtype, then for
/// every position `i` of `src` in row-major order `out[i with i[axis]
/// replaced by idx[i[..k]]] += src[i]`, `k` the rank of `idx` (`src` is
/// `idx.shape ++ shape[k..]`: a lower-rank index moves whole rows). The fixed order makes the sums
/// deterministic. An index outside `[0, shape[axis])` is an error naming its
/// position and value.
///
/// ```
/// use reformc_interp::tensor_ops::scatter_add;
/// use ndarray::{arr1, arr2};
/// let idx = arr1(&[2i64, 0, 2]).into_dyn();
/// let src = arr1(&[1.0f64, 2.0, 3.0]).into_dyn();
/// let out = scatter_add(&[4], &idx, &src, 0).unwrap();
/// assert_eq!(out.into_raw_vec_and_offset().0, vec![2.0, 0.0, 4.0, 0.0]);
/// assert!(scatter_add(&[2], &idx, &src, 0).unwrap_err().contains("[0]"));
/// ```
pub fn scatter_add<T: Real>(
    shape: &[usize],
    idx: &ArrayD<i64>,
    src: &ArrayD<T>,
    axis: usize,
) -> Result<ArrayD<T>, String> {
    let k = idx.ndim();
    if src.shape().get(..k) != Some(idx.shape()) {
        return Err(format!(
            "indices {:?} must be the leading axes of the source {:?}",
            idx.shape(),
            src.shape()
        ));
    }
    let fits = src.ndim() == shape.len()
        && axis < k
        && (0..shape.len()).all(|a| a == axis || src.shape()[a] == shape[a]);
    if !fits {
        return Err(format!(
            "source {:?} must match the result {shape:?} on every axis but {axis}",
            src.shape()
        ));
    }
    let n = shape[axis];
    let mut out = ArrayD::<T>::zeros(IxDyn(shape));
    // `indexed_iter` walks in logical row-major order whatever the layout;
    // an index of rank k serves the src elements sharing its k coordinates.
    for (pos, &s) in src.indexed_iter() {
        let i = idx[&pos.slice()[..k]];
        if i < 0 || i as usize >= n {
            return Err(format!(
                "scatter_add index {i} at position {:?} is out of range for axis {axis} of length {n}",
                pos.slice()
            ));
        }
        let mut dst = pos.clone();
        dst[axis] = i as usize;
        out[dst] += s;
    }
    Ok(out)
}

/// `x` broadcast (numpy rules) to `shape`, materialised.
///
/// ```
/// use reformc_interp::{tensor_ops::broadcast_to, Tensor};
/// use ndarray::arr2;
/// let x = Tensor::I64(arr2(&[[1i64], [2]]).into_dyn());
/// let y = broadcast_to(&x, &[2, 3]).unwrap();
/// assert_eq!(y.to_i64().into_raw_vec_and_offset().0, vec![1, 1, 1, 2, 2, 2]);
/// assert!(broadcast_to(&x, &[3, 3]).is_err());
/// ```
pub fn broadcast_to(x: &Tensor, shape: &[usize]) -> Result<Tensor, String> {
    let bad = || format!("{:?} does not broadcast to {shape:?}", x.shape());
    Ok(each!(x, a => Tensor::from(
        a.broadcast(IxDyn(shape)).ok_or_else(bad)?.as_standard_layout().into_owned()
    )))
}

/// `dy * act'(x)` elementwise (see [`crate::nn::activate_grad`]), the
/// product taken in f64 and rounded once.
pub fn act_grad<T: Real>(
    act: Activation,
    x: &ArrayD<T>,
    dy: &ArrayD<T>,
) -> Result<ArrayD<T>, String> {
    if x.shape() != dy.shape() {
        return Err(format!(
            "dy {:?} must have the shape of x {:?}",
            dy.shape(),
            x.shape()
        ));
    }
    Ok(Zip::from(x).and(dy).map_collect(|&xv, &g| {
        let d = crate::nn::activate_grad::<f64>(act, xv.to_f64().expect("float"));
        T::of(g.to_f64().expect("float") * d)
    }))
}

/// Index of the first maximum along `axis` (numpy/torch semantics).
pub fn argmax(x: &Tensor, axis: usize) -> ArrayD<i64> {
    let v = x.to_f64();
    v.map_axis(Axis(axis), |lane| {
        let mut best = (0usize, f64::NEG_INFINITY);
        for (i, &e) in lane.iter().enumerate() {
            if e > best.1 || (i == 0 && e.is_nan()) {
                best = (i, e);
            }
        }
        best.0 as i64
    })
}

/// Stable ascending sort permutation along `axis`.
pub fn argsort(x: &Tensor, axis: usize) -> ArrayD<i64> {
    let v = x.to_f64();
    let mut out = ArrayD::<i64>::zeros(v.raw_dim());
    for (lane, mut o) in v
        .lanes(Axis(axis))
        .into_iter()
        .zip(out.lanes_mut(Axis(axis)))
    {
        let mut idx: Vec<usize> = (0..lane.len()).collect();
        idx.sort_by(|&a, &b| lane[a].total_cmp(&lane[b]));
        for (slot, i) in o.iter_mut().zip(idx) {
            *slot = i as i64;
        }
    }
    out
}

/// `cond ? a : b` with broadcasting.
pub fn select(cond: &ArrayD<bool>, a: &Tensor, b: &Tensor) -> Result<Tensor, String> {
    let shape = broadcast_shape(&broadcast_shape(cond.shape(), a.shape())?, b.shape())?;
    let c = cond.broadcast(IxDyn(&shape)).expect("checked");
    macro_rules! sel {
        ($x:expr, $y:expr, $wrap:path) => {{
            let (xa, ya) = (
                $x.broadcast(IxDyn(&shape)).expect("checked"),
                $y.broadcast(IxDyn(&shape)).expect("checked"),
            );
            Ok($wrap(Zip::from(&c).and(&xa).and(&ya).map_collect(
                |&k, p, q| if k { p.clone() } else { q.clone() },
            )))
        }};
    }
    match (a, b) {
        (Tensor::F32(x), Tensor::F32(y)) => sel!(x, y, Tensor::F32),
        (Tensor::F64(x), Tensor::F64(y)) => sel!(x, y, Tensor::F64),
        (Tensor::I64(x), Tensor::I64(y)) => sel!(x, y, Tensor::I64),
        (Tensor::I32(x), Tensor::I32(y)) => sel!(x, y, Tensor::I32),
        (Tensor::Bool(x), Tensor::Bool(y)) => sel!(x, y, Tensor::Bool),
        _ => Err(format!(
            "select branches differ in dtype: {} and {}",
            a.dtype(),
            b.dtype()
        )),
    }
}

/// Same elements in row-major order, new shape.
pub fn reshape(x: &Tensor, shape: &[usize]) -> Result<Tensor, String> {
    let n: usize = shape.iter().product();
    if n != x.shape().iter().product::<usize>() {
        return Err(format!("cannot reshape {:?} to {shape:?}", x.shape()));
    }
    Ok(
        each!(x, a => Tensor::from(a.as_standard_layout().into_owned().into_shape_with_order(IxDyn(shape)).expect("count checked"))),
    )
}

/// Permutes axes.
pub fn transpose(x: &Tensor, perm: &[usize]) -> Tensor {
    each!(x, a => Tensor::from(a.clone().permuted_axes(IxDyn(perm)).as_standard_layout().into_owned()))
}

/// Joins tensors along `axis`.
pub fn concat(xs: &[&Tensor], axis: usize) -> Result<Tensor, String> {
    macro_rules! cat {
        ($variant:path) => {{
            let views: Result<Vec<_>, String> = xs
                .iter()
                .map(|t| match t {
                    $variant(a) => Ok(a.view()),
                    other => Err(format!(
                        "concat operands differ in dtype ({})",
                        other.dtype()
                    )),
                })
                .collect();
            Ok($variant(
                concatenate(Axis(axis), &views?).map_err(|e| e.to_string())?,
            ))
        }};
    }
    match xs[0] {
        Tensor::F32(_) => cat!(Tensor::F32),
        Tensor::F64(_) => cat!(Tensor::F64),
        Tensor::I64(_) => cat!(Tensor::I64),
        Tensor::I32(_) => cat!(Tensor::I32),
        Tensor::Bool(_) => cat!(Tensor::Bool),
    }
}

/// Selects position `index` of `axis`, dropping the axis.
pub fn index(x: &Tensor, axis: usize, index: usize) -> Result<Tensor, String> {
    if index >= x.shape()[axis] {
        return Err(format!(
            "index {index} is out of range for axis {axis} of length {}",
            x.shape()[axis]
        ));
    }
    Ok(each!(x, a => Tensor::from(a.index_axis(Axis(axis), index).to_owned())))
}

/// The range `[start, end)` of `axis`.
pub fn slice(x: &Tensor, axis: usize, start: usize, end: usize) -> Result<Tensor, String> {
    if start > end || end > x.shape()[axis] {
        return Err(format!(
            "range {start}..{end} is out of range for axis {axis} of length {}",
            x.shape()[axis]
        ));
    }
    Ok(each!(x, a => Tensor::from(a.slice_axis(Axis(axis), Slice::from(start..end)).to_owned())))
}

/// HF's eval padding: when the axis is longer than `min_len` and not a
/// multiple of `multiple`, pad it up to the next multiple with `value`.
///
/// ```
/// use reformc_interp::{tensor_ops::pad_to_multiple, Tensor};
/// use ndarray::{ArrayD, IxDyn};
/// let x = Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[1, 5]), vec![1, 2, 3, 4, 5]).unwrap());
/// assert_eq!(pad_to_multiple(&x, 1, 4, 2, 0.0).shape(), &[1, 8]);
/// assert_eq!(pad_to_multiple(&x, 1, 4, 8, 0.0).shape(), &[1, 5]); // not above min_len
/// ```
pub fn pad_to_multiple(
    x: &Tensor,
    axis: usize,
    multiple: usize,
    min_len: usize,
    value: f64,
) -> Tensor {
    let n = x.shape()[axis];
    let padded = reformc_ir::hf_rules::padded_len(n as u64, multiple as u64, min_len as u64);
    if padded <= n as u64 {
        return x.clone();
    }
    let extra = padded as usize - n;
    let mut shape = x.shape().to_vec();
    shape[axis] = extra;
    let fill = Tensor::F64(ArrayD::from_elem(IxDyn(&shape), value)).cast(x.dtype());
    concat(&[x, &fill], axis).expect("same dtype and rank")
}
