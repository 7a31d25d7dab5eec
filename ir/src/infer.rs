//! The type rules of every op, in one place: the verifier checks a node's
//! declared result type with [`check_type`], and the e-graph analysis derives
//! result types with [`infer_type`].

use crate::activation::Activation;
use crate::attr::Attr;
use crate::op::AttrType;
use crate::{DType, Dim, Op, OpKind, TensorType};
use std::collections::HashSet;

/// The result type of `op` applied to operands of types `operands`, by the
/// IR's type rules (the rules [`verify`](crate::verify) checks).
///
/// - `Ok(Some(ty))`: the rules derive the result type from the operands.
/// - `Ok(None)`: the operands fit, but the result type is declared rather
///   than derived: sources (`input`, `weight`, `constant`, `arg`),
///   `random_normal`, `cast`, `reshape`, `pad_to_multiple`, `concat` along a
///   symbolic axis and `seq_chunk` (whose result the body determines). Use
///   [`check_type`] to check a declared type.
/// - `Err(message)`: the op's operand count or attributes do not fit its
///   schema, or the operands do not fit the op; the message is the one the
///   verifier reports.
///
/// ```
/// use reformc_ir::{infer_type, Attr, DType, Dim, Op, OpKind, TensorType};
/// let x = TensorType::new(DType::F32, vec![Dim::sym("B"), Dim::sym("L"), Dim::Const(8)]);
/// let w = TensorType::new(DType::F32, vec![Dim::Const(16), Dim::Const(8)]);
/// let y = infer_type(&Op::new(OpKind::Linear), &[&x, &w]).unwrap().unwrap();
/// assert_eq!(y.to_string(), "f32[B,L,16]");
/// let perm = Op::new(OpKind::Transpose).with("perm", Attr::Ints(vec![2, 0, 1]));
/// assert_eq!(infer_type(&perm, &[&x]).unwrap().unwrap().to_string(), "f32[8,B,L]");
/// // `reshape` takes its result type from its declaration.
/// assert_eq!(infer_type(&Op::new(OpKind::Reshape), &[&x]).unwrap(), None);
/// // Operands the op cannot take: the verifier's message.
/// let ids = x.with_dtype(DType::I64);
/// assert_eq!(
///     infer_type(&Op::new(OpKind::Exp), &[&ids]).unwrap_err(),
///     "operand 0 must be a float tensor, found i64[B,L,8]"
/// );
/// ```
pub fn infer_type(op: &Op, operands: &[&TensorType]) -> Result<Option<TensorType>, String> {
    use OpKind::*;
    check_operand_count(op.kind, operands.len())?;
    check_attrs(op)?;
    let t = operands;
    Ok(Some(match op.kind {
        Arg | Input | Weight | Constant | Cast | Reshape => return Ok(None),
        RandomNormal => {
            if t[0].dtype != DType::I64 || t[0].rank() != 0 {
                return Err(format!("operand 0 (seed) must be i64[], found {}", t[0]));
            }
            return Ok(None);
        }
        DropoutMask => {
            if t[0].dtype != DType::I64 || t[0].rank() != 0 {
                return Err(format!("operand 0 (seed) must be i64[], found {}", t[0]));
            }
            float(1, t[1])?;
            let p = op.float("p").unwrap_or(f64::NAN);
            if !(0.0..=1.0).contains(&p) {
                return Err(format!(
                    "attribute p must be a probability in [0, 1], found {p}"
                ));
            }
            t[1].clone()
        }
        Embedding => {
            int(0, t[0])?;
            float(1, t[1])?;
            rank(1, t[1], 2)?;
            let mut shape = t[0].shape.clone();
            shape.push(t[1].shape[1].clone());
            TensorType::new(t[1].dtype, shape)
        }
        AxialPosEmbedding => {
            int(0, t[0])?;
            rank(0, t[0], 1)?;
            for (i, w) in t.iter().enumerate().skip(1) {
                float(i, w)?;
                rank(i, w, 3)?;
            }
            let (w0, w1) = (t[1], t[2]);
            if w0.shape[1] != Dim::Const(1) || w1.shape[0] != Dim::Const(1) {
                return Err(format!(
                    "axial weights must be [n0,1,d0] and [1,n1,d1], found {w0} and {w1}"
                ));
            }
            let width = match (&w0.shape[2], &w1.shape[2]) {
                (Dim::Const(a), Dim::Const(b)) => Dim::Const(a + b),
                _ => return Err("axial widths must be constants".into()),
            };
            TensorType::new(w0.dtype, vec![t[0].shape[0].clone(), width])
        }
        LayerNorm => {
            float(0, t[0])?;
            let last = t[0].shape.last().ok_or("operand 0 must have rank >= 1")?;
            for (i, p) in t.iter().enumerate().skip(1) {
                if p.shape != [last.clone()] || p.dtype != t[0].dtype {
                    return Err(format!(
                        "operand {i} must be {}[{last}], found {p}",
                        t[0].dtype
                    ));
                }
            }
            t[0].clone()
        }
        Linear => {
            float(0, t[0])?;
            rank(1, t[1], 2)?;
            let (x, w) = (t[0], t[1]);
            if x.shape.last() != Some(&w.shape[1]) || x.dtype != w.dtype {
                return Err(format!(
                    "weight {w} does not fit input {x} (expected [out,{}])",
                    x.shape.last().map_or("?".into(), |d| d.to_string())
                ));
            }
            if let Some(b) = t.get(2) {
                if b.shape != [w.shape[0].clone()] || b.dtype != x.dtype {
                    return Err(format!(
                        "bias must be {}[{}], found {b}",
                        x.dtype, w.shape[0]
                    ));
                }
            }
            op.activation()?;
            let mut shape = x.shape.clone();
            *shape.last_mut().expect("rank checked") = w.shape[0].clone();
            TensorType::new(x.dtype, shape)
        }
        Attention | LocalAttention => {
            check_attention_operands(op, t)?;
            if op.kind == LocalAttention && t[0].shape[1] != t[1].shape[1] {
                return Err("local attention needs queries and keys of the same length".into());
            }
            TensorType::new(
                t[0].dtype,
                vec![
                    t[0].shape[0].clone(),
                    t[0].shape[1].clone(),
                    t[2].shape[2].clone(),
                ],
            )
        }
        LshHash => {
            float(0, t[0])?;
            rank(0, t[0], 3)?;
            float(1, t[1])?;
            rank(1, t[1], 4)?;
            let factors = op.ints("buckets").unwrap_or(&[]);
            if factors.is_empty() || factors.iter().any(|f| f % 2 != 0) {
                return Err(format!(
                    "every bucket factor must be even, found {:?}",
                    factors
                ));
            }
            let heads = op.int("heads").unwrap_or(1) as u64;
            let rounds = op.int("n_hashes").unwrap_or(1) as u64;
            let half: i64 = factors.iter().sum::<i64>() / 2;
            let want_rot = [
                Dim::Const(heads),
                Dim::Const(width(t[0], heads)?),
                Dim::Const(rounds),
                Dim::Const(half as u64),
            ];
            if t[1].shape != want_rot {
                let want = TensorType::new(t[0].dtype, want_rot.to_vec());
                return Err(format!("rotations must be {want}, found {}", t[1]));
            }
            if let Some(m) = t.get(2) {
                check_mask(2, m, &t[0].shape[0], &t[0].shape[1])?;
            }
            let shape = vec![
                t[0].shape[0].clone(),
                Dim::Const(heads),
                Dim::Const(rounds),
                t[0].shape[1].clone(),
            ];
            TensorType::new(DType::I64, shape)
        }
        LshAttention => {
            float(0, t[0])?;
            rank(0, t[0], 3)?;
            float(1, t[1])?;
            if t[1].shape != t[0].shape {
                return Err(format!(
                    "values must have the shape of the shared query/keys {}, found {}",
                    t[0], t[1]
                ));
            }
            int(2, t[2])?;
            rank(2, t[2], 4)?;
            let heads = op.int("heads").unwrap_or(1) as u64;
            width(t[0], heads)?;
            let b = &t[2].shape;
            if b[0] != t[0].shape[0] || b[1] != Dim::Const(heads) || b[3] != t[0].shape[1] {
                return Err(format!(
                    "buckets must be [{},{heads},r,{}], found {}",
                    t[0].shape[0], t[0].shape[1], t[2]
                ));
            }
            if let Some(m) = t.get(3) {
                check_mask(3, m, &t[0].shape[0], &t[0].shape[1])?;
            }
            t[0].clone()
        }
        // The regions are checked with the graph (`verify`).
        ReversibleBlock => {
            float(0, t[0])?;
            half_of_last(t[0])?;
            t[0].clone()
        }
        // The result type is the body's (checked with the graph).
        SeqChunk | PadToMultiple => {
            axis_of(op, t[0], "axis")?;
            return Ok(None);
        }
        Truncate => {
            let a = axis_of(op, t[0], "axis")?;
            if a >= t[1].rank() {
                return Err(format!(
                    "axis {a} is out of range for the reference {}",
                    t[1]
                ));
            }
            let mut want = t[0].clone();
            want.shape[a] = t[1].shape[a].clone();
            want
        }
        Iota => {
            let a = axis_of(op, t[0], "axis")?;
            TensorType::new(DType::I64, vec![t[0].shape[a].clone()])
        }
        Index => {
            let a = axis_of(op, t[0], "axis")?;
            let i = op.int("index").unwrap_or(0) as u64;
            if let Dim::Const(n) = t[0].shape[a] {
                if i >= n {
                    return Err(format!(
                        "index {i} is out of range for axis {a} of {}",
                        t[0]
                    ));
                }
            }
            let mut want = t[0].clone();
            want.shape.remove(a);
            want
        }
        Slice => {
            let a = axis_of(op, t[0], "axis")?;
            let (s, e) = (
                op.int("start").unwrap_or(0) as u64,
                op.int("end").unwrap_or(0) as u64,
            );
            if s > e || t[0].shape[a].as_const().is_some_and(|n| e > n) {
                return Err(format!(
                    "range {s}..{e} is out of range for axis {a} of {}",
                    t[0]
                ));
            }
            let mut want = t[0].clone();
            want.shape[a] = Dim::Const(e - s);
            want
        }
        Add | Sub | Mul | Div | Max | Min | Lt | Eq => {
            if t[0].dtype != t[1].dtype {
                return Err(format!("operand dtypes differ: {} and {}", t[0], t[1]));
            }
            let shape = broadcast(&t[0].shape, &t[1].shape)
                .ok_or_else(|| format!("shapes do not broadcast: {} and {}", t[0], t[1]))?;
            let dtype = if matches!(op.kind, Lt | Eq) {
                DType::Bool
            } else {
                t[0].dtype
            };
            TensorType::new(dtype, shape)
        }
        Neg => t[0].clone(),
        Exp | Log | Sqrt | Rsqrt | Tanh | Softmax => {
            float(0, t[0])?;
            if op.kind == Softmax {
                axis_of(op, t[0], "axis")?;
            }
            t[0].clone()
        }
        Act => {
            float(0, t[0])?;
            if op.activation()? == Activation::None {
                return Err(format!(
                    "unknown activation `` (known: {})",
                    Activation::names()
                ));
            }
            t[0].clone()
        }
        Matmul => {
            let (a, b) = (t[0], t[1]);
            if a.rank() < 2 || a.rank() != b.rank() || a.dtype != b.dtype {
                return Err(format!(
                    "operands must have the same dtype and equal ranks >= 2, found {a} and {b}"
                ));
            }
            let n = a.rank();
            if a.shape[n - 1] != b.shape[n - 2] {
                return Err(format!("contraction dims differ: {a} x {b}"));
            }
            let mut shape = broadcast(&a.shape[..n - 2], &b.shape[..n - 2])
                .ok_or_else(|| format!("batch dims do not broadcast: {a} x {b}"))?;
            shape.push(a.shape[n - 2].clone());
            shape.push(b.shape[n - 1].clone());
            TensorType::new(a.dtype, shape)
        }
        Reduce => {
            op.reduction()?;
            let axes = op.ints("axes").unwrap_or(&[]);
            let mut seen = HashSet::new();
            for &a in axes {
                if a as usize >= t[0].rank() || !seen.insert(a) {
                    return Err(format!(
                        "axes {axes:?} are out of range or repeated for {}",
                        t[0]
                    ));
                }
            }
            let keep = op.flag("keepdim");
            let shape = (0..t[0].rank())
                .filter_map(|i| match (seen.contains(&(i as i64)), keep) {
                    (false, _) => Some(t[0].shape[i].clone()),
                    (true, true) => Some(Dim::Const(1)),
                    (true, false) => None,
                })
                .collect();
            TensorType::new(t[0].dtype, shape)
        }
        Gather => {
            let a = axis_of(op, t[0], "axis")?;
            int(1, t[1])?;
            index_fits(t[1], t[0], a, "operand 0 (data)")?;
            let mut shape = t[1].shape.clone();
            shape.extend_from_slice(&t[0].shape[t[1].rank()..]);
            TensorType::new(t[0].dtype, shape)
        }
        Argmax => {
            let a = axis_of(op, t[0], "axis")?;
            let mut shape = t[0].shape.clone();
            shape.remove(a);
            TensorType::new(DType::I64, shape)
        }
        Argsort => {
            axis_of(op, t[0], "axis")?;
            t[0].with_dtype(DType::I64)
        }
        Select => {
            if t[0].dtype != DType::Bool || t[1].dtype != t[2].dtype {
                return Err(format!(
                    "select takes (bool, T, T), found ({}, {}, {})",
                    t[0], t[1], t[2]
                ));
            }
            let s = broadcast(&t[0].shape, &t[1].shape).and_then(|s| broadcast(&s, &t[2].shape));
            let shape =
                s.ok_or_else(|| format!("shapes do not broadcast: {}, {}, {}", t[0], t[1], t[2]))?;
            TensorType::new(t[1].dtype, shape)
        }
        Transpose => {
            let perm = op.ints("perm").unwrap_or(&[]);
            let mut sorted: Vec<i64> = perm.to_vec();
            sorted.sort_unstable();
            if sorted != (0..t[0].rank() as i64).collect::<Vec<_>>() {
                return Err(format!(
                    "perm {perm:?} is not a permutation of the axes of {}",
                    t[0]
                ));
            }
            let shape = perm
                .iter()
                .map(|&p| t[0].shape[p as usize].clone())
                .collect();
            TensorType::new(t[0].dtype, shape)
        }
        Concat => {
            let a = axis_of(op, t[0], "axis")?;
            let mut total = Some(0u64);
            for (i, x) in t.iter().enumerate() {
                if x.dtype != t[0].dtype
                    || x.rank() != t[0].rank()
                    || (0..x.rank()).any(|j| j != a && x.shape[j] != t[0].shape[j])
                {
                    return Err(format!(
                        "operand {i} {x} does not fit {} along axis {a}",
                        t[0]
                    ));
                }
                total = total.zip(x.shape[a].as_const()).map(|(s, c)| s + c);
            }
            // Along a symbolic axis the result type is declared.
            let Some(n) = total else { return Ok(None) };
            let mut want = t[0].clone();
            want.shape[a] = Dim::Const(n);
            want
        }
        Broadcast => {
            broadcasts_to(t[0], t[1])?;
            TensorType::new(t[0].dtype, t[1].shape.clone())
        }
        ScatterAdd => {
            check_scatter_operands(op, t)?;
            TensorType::new(t[2].dtype, t[0].shape.clone())
        }
        LmLoss => {
            lm_loss_operands(t)?;
            TensorType::scalar(t[0].dtype)
        }
        LshAttentionGrad => {
            let mut fwd: Vec<&TensorType> = t[..3].to_vec();
            fwd.extend(t.get(5).copied());
            let ty = infer_type(
                &Op {
                    kind: LshAttention,
                    ..op.clone()
                },
                &fwd,
            )?
            .ok_or("lsh_attention derives its type")?;
            for (i, name) in [(3, "y"), (4, "dy")] {
                if *t[i] != ty {
                    return Err(format!("operand {i} ({name}) must be {ty}, found {}", t[i]));
                }
            }
            let mut shape = vec![Dim::Const(2)];
            shape.extend(ty.shape.iter().cloned());
            TensorType::new(ty.dtype, shape)
        }
        LocalAttentionGrad => {
            let mut fwd: Vec<&TensorType> = t[..3].to_vec();
            fwd.extend(t.get(5).copied());
            let ty = infer_type(
                &Op {
                    kind: LocalAttention,
                    ..op.clone()
                },
                &fwd,
            )?
            .ok_or("local_attention derives its type")?;
            for (i, name) in [(0, "q"), (1, "k"), (3, "y"), (4, "dy")] {
                if *t[i] != ty {
                    return Err(format!("operand {i} ({name}) must be {ty}, found {}", t[i]));
                }
            }
            let mut shape = vec![Dim::Const(3)];
            shape.extend(ty.shape.iter().cloned());
            TensorType::new(ty.dtype, shape)
        }
        FeedForward => feed_forward_type(t, op)?,
        FeedForwardGrad => {
            let fwd = feed_forward_type(&t[..7], op)?;
            if *t[7] != fwd {
                return Err(format!("operand 7 (dy) must be {fwd}, found {}", t[7]));
            }
            let wrt = op.str("wrt").unwrap_or("");
            let i = FEED_FORWARD_OPERANDS
                .iter()
                .position(|n| *n == wrt)
                .ok_or_else(|| {
                    format!(
                        "wrt must name an operand ({}), found \"{wrt}\"",
                        FEED_FORWARD_OPERANDS.join(", ")
                    )
                })?;
            t[i].clone()
        }
        LayerNormGrad => {
            float(0, t[0])?;
            let last = t[0].shape.last().ok_or("operand 0 must have rank >= 1")?;
            if t[1].shape != [last.clone()] || t[1].dtype != t[0].dtype {
                return Err(format!(
                    "operand 1 (weight) must be {}[{last}], found {}",
                    t[0].dtype, t[1]
                ));
            }
            if t[2] != t[0] {
                return Err(format!("operand 2 (dy) must be {}, found {}", t[0], t[2]));
            }
            match op.str("wrt") {
                Some("x") => t[0].clone(),
                Some("w") => t[1].clone(),
                other => {
                    return Err(format!(
                        "wrt must be \"x\" or \"w\", found {}",
                        other.unwrap_or("nothing")
                    ))
                }
            }
        }
        LmLossGrad => {
            lm_loss_operands(t)?;
            if t[3].rank() != 0 || t[3].dtype != t[0].dtype {
                return Err(format!(
                    "operand 3 (dy) must be a {} scalar, found {}",
                    t[0].dtype, t[3]
                ));
            }
            match op.str("wrt") {
                Some("h") => t[0].clone(),
                Some("w") => t[1].clone(),
                other => {
                    return Err(format!(
                        "wrt must be \"h\" or \"w\", found {}",
                        other.unwrap_or("nothing")
                    ))
                }
            }
        }
        ActGrad => {
            float(0, t[0])?;
            if t[1] != t[0] {
                return Err(format!(
                    "operand 1 (dy) must have the type of x {}, found {}",
                    t[0], t[1]
                ));
            }
            if op.activation()? == Activation::None {
                return Err(format!(
                    "unknown activation `` (known: {})",
                    Activation::names()
                ));
            }
            t[0].clone()
        }
    }))
}

/// Checks `result` as the result type of `op` applied to operands of types
/// `operands`: it must equal the type [`infer_type`] derives, and a declared
/// type must fit the op (a scalar `constant`, a `cast` that keeps the shape,
/// a `reshape` that keeps the dtype and element count, ...). The message on
/// failure is the one the verifier reports. `seq_chunk`'s result type is
/// checked against its body by [`verify`](crate::verify), not here.
///
/// ```
/// use reformc_ir::{check_type, DType, Dim, Op, OpKind, TensorType};
/// let x = TensorType::new(DType::F32, vec![Dim::sym("N"), Dim::Const(4)]);
/// check_type(&Op::new(OpKind::Exp), &[&x], &x).unwrap();
/// let y = TensorType::new(DType::F32, vec![Dim::sym("N")]);
/// assert_eq!(
///     check_type(&Op::new(OpKind::Exp), &[&x], &y).unwrap_err(),
///     "result type must be f32[N,4], found f32[N]"
/// );
/// check_type(&Op::new(OpKind::Cast), &[&x], &x.with_dtype(DType::I64)).unwrap();
/// ```
pub fn check_type(op: &Op, operands: &[&TensorType], result: &TensorType) -> Result<(), String> {
    use OpKind::*;
    let (t, r) = (operands, result);
    if let Some(want) = infer_type(op, t)? {
        return expect(r, want);
    }
    match op.kind {
        Constant => rank(0, r, 0).map_err(|_| format!("result must be a scalar, found {r}")),
        RandomNormal => {
            if !r.dtype.is_float() || r.shape.iter().any(|d| d.as_const().is_none()) {
                return Err(format!(
                    "result must be a float tensor of constant shape, found {r}"
                ));
            }
            Ok(())
        }
        PadToMultiple | Concat => same_except(r, t[0], axis_of(op, t[0], "axis")?),
        Cast => expect(r, t[0].with_dtype(r.dtype)),
        Reshape => {
            if r.dtype != t[0].dtype {
                return Err(format!("reshape keeps the dtype: {} to {r}", t[0]));
            }
            let count = |t: &TensorType| {
                t.shape
                    .iter()
                    .map(|d| d.as_const())
                    .product::<Option<u64>>()
            };
            match (count(t[0]), count(r)) {
                (Some(a), Some(b)) if a != b => Err(format!(
                    "element counts differ: {} has {a}, {r} has {b}",
                    t[0]
                )),
                _ => Ok(()),
            }
        }
        // Sources take any type; `seq_chunk`'s is checked with its body.
        Arg | Input | Weight | SeqChunk => Ok(()),
        // These derive their result type in `infer_type`, which answered above.
        Embedding | AxialPosEmbedding | LayerNorm | Linear | Attention | LocalAttention
        | LshHash | LshAttention | ReversibleBlock | Truncate | Iota | Index | Slice | Add
        | Sub | Mul | Div | Max | Min | Lt | Eq | Neg | Exp | Log | Sqrt | Rsqrt | Tanh | Act
        | Matmul | Reduce | Softmax | Gather | Argmax | Argsort | Select | Transpose
        | Broadcast | ScatterAdd | ActGrad | DropoutMask | LmLoss | LmLossGrad | LayerNormGrad
        | LshAttentionGrad | LocalAttentionGrad | FeedForward | FeedForwardGrad => Err(format!(
            "`{op}` derives its result type, but none was derived"
        )),
    }
}

/// The operand count `kind`'s schema allows.
pub(crate) fn check_operand_count(kind: OpKind, n: usize) -> Result<(), String> {
    let s = kind.schema();
    if n < s.min_operands || s.max_operands.is_some_and(|m| n > m) {
        let want = match s.max_operands {
            Some(m) if m == s.min_operands => format!("{m}"),
            Some(m) => format!("{} to {m}", s.min_operands),
            None => format!("at least {}", s.min_operands),
        };
        return Err(format!("takes {want} operands, found {n}"));
    }
    Ok(())
}

/// The attributes `op`'s schema allows: known names, required ones present,
/// each of its kind and at least its minimum.
pub(crate) fn check_attrs(op: &Op) -> Result<(), String> {
    let s = op.kind.schema();
    for (key, value) in &op.attrs {
        // Every op may record its model layer (see `reformc_ir::LAYER`).
        if key == crate::LAYER {
            if !matches!(value, Attr::Int(i) if *i >= 0) {
                return Err(format!(
                    "attribute `{key}` must be an Int >= 0, found `{value}`"
                ));
            }
            continue;
        }
        if !s.attrs.iter().any(|a| a.name == key) {
            let known: Vec<_> = s.attrs.iter().map(|a| a.name).collect();
            return Err(format!(
                "unknown attribute `{key}` (known: {})",
                if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                }
            ));
        }
    }
    for spec in s.attrs {
        let Some(value) = op.attrs.get(spec.name) else {
            if spec.required {
                return Err(format!("missing attribute `{}`", spec.name));
            }
            continue;
        };
        let type_ok = matches!(
            (spec.ty, value),
            (AttrType::Unit, Attr::Unit)
                | (AttrType::Int, Attr::Int(_))
                | (AttrType::Float, Attr::Float(_))
                | (AttrType::Str, Attr::Str(_))
                | (AttrType::Ints, Attr::Ints(_))
                | (AttrType::Number, Attr::Int(_) | Attr::Float(_))
        );
        if !type_ok {
            return Err(format!(
                "attribute `{}` must be {:?}, found `{value}`",
                spec.name, spec.ty
            ));
        }
        let below = match value {
            Attr::Int(x) => *x < spec.min,
            Attr::Ints(xs) => xs.iter().any(|x| *x < spec.min),
            _ => false,
        };
        if below {
            return Err(format!(
                "attribute `{}` must be >= {}, found {value}",
                spec.name, spec.min
            ));
        }
    }
    Ok(())
}

pub(crate) fn half_of_last(x: &TensorType) -> Result<TensorType, String> {
    let mut half = x.clone();
    match half.shape.last_mut() {
        Some(Dim::Const(c)) if *c % 2 == 0 => *c /= 2,
        _ => {
            return Err(format!(
                "input must have an even constant last axis, found {x}"
            ))
        }
    }
    Ok(half)
}

/// `lm_loss`'s operands: `h` float `[.., D]`, `w` `[V, D]` of its dtype,
/// integer `labels` of `h`'s shape without the last axis.
fn lm_loss_operands(t: &[&TensorType]) -> Result<(), String> {
    let (h, w, labels) = (t[0], t[1], t[2]);
    float(0, h)?;
    let d = h
        .shape
        .last()
        .ok_or_else(|| format!("operand 0 (h) must have rank >= 1, found {h}"))?;
    if w.rank() != 2 || w.dtype != h.dtype || &w.shape[1] != d {
        return Err(format!(
            "operand 1 (w) must be {}[V,{d}] (the head's weight), found {w}",
            h.dtype
        ));
    }
    int(2, labels)?;
    if labels.shape[..] != h.shape[..h.rank() - 1] {
        return Err(format!(
            "operand 2 (labels) must have h's shape without its last axis, [{}], found {labels}",
            h.shape[..h.rank() - 1]
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    Ok(())
}

/// Rows per block of `feed_forward_grad` at least (its `chunk` when larger):
/// a weight gradient sums over a block's rows, and shorter sums make the
/// `[F, D]` accumulators' memory traffic dominate. The runtime's kernel and
/// the memory plan's scratch estimate both read it.
pub const FEED_FORWARD_MIN_BLOCK_ROWS: u64 = 1024;

/// The operands of `feed_forward`, by the names `feed_forward_grad`'s `wrt` uses.
pub const FEED_FORWARD_OPERANDS: [&str; 7] = ["x", "ln_w", "ln_b", "w1", "b1", "w2", "b2"];

/// `feed_forward`'s result type: `x` `[..., D]`, `ln_w`/`ln_b` `[D]`, `w1`
/// `[F, D]`, `b1` `[F]`, `w2` `[D, F]`, `b2` `[D]`, one float dtype.
fn feed_forward_type(t: &[&TensorType], op: &Op) -> Result<TensorType, String> {
    float(0, t[0])?;
    let d = t[0]
        .shape
        .last()
        .ok_or("operand 0 (x) must have rank >= 1")?;
    rank(3, t[3], 2)?;
    let f = &t[3].shape[0];
    let want: [Vec<Dim>; 6] = [
        vec![d.clone()],
        vec![d.clone()],
        vec![f.clone(), d.clone()],
        vec![f.clone()],
        vec![d.clone(), f.clone()],
        vec![d.clone()],
    ];
    for (i, shape) in want.iter().enumerate() {
        let p = t[i + 1];
        if p.shape != *shape || p.dtype != t[0].dtype {
            let dims: Vec<String> = shape.iter().map(ToString::to_string).collect();
            return Err(format!(
                "operand {} ({}) must be {}[{}], found {p}",
                i + 1,
                FEED_FORWARD_OPERANDS[i + 1],
                t[0].dtype,
                dims.join(",")
            ));
        }
    }
    op.activation()?;
    Ok(t[0].clone())
}

fn float(i: usize, t: &TensorType) -> Result<(), String> {
    if t.dtype.is_float() {
        Ok(())
    } else {
        Err(format!("operand {i} must be a float tensor, found {t}"))
    }
}

fn int(i: usize, t: &TensorType) -> Result<(), String> {
    if t.dtype.is_int() {
        Ok(())
    } else {
        Err(format!("operand {i} must be an integer tensor, found {t}"))
    }
}

fn rank(i: usize, t: &TensorType, r: usize) -> Result<(), String> {
    if t.rank() == r {
        Ok(())
    } else {
        Err(format!("operand {i} must have rank {r}, found {t}"))
    }
}

fn axis_of(op: &Op, t: &TensorType, name: &str) -> Result<usize, String> {
    let a = op.usize(name).unwrap_or(0);
    if a < t.rank() {
        Ok(a)
    } else {
        Err(format!("attribute `{name}`={a} is out of range for {t}"))
    }
}

pub(crate) fn expect(result: &TensorType, want: TensorType) -> Result<(), String> {
    if *result == want {
        Ok(())
    } else {
        Err(format!("result type must be {want}, found {result}"))
    }
}

/// numpy broadcasting of two shapes; `None` when they do not broadcast.
fn broadcast(a: &[Dim], b: &[Dim]) -> Option<Vec<Dim>> {
    let n = a.len().max(b.len());
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let da = (i + a.len()).checked_sub(n).map(|j| &a[j]);
        let db = (i + b.len()).checked_sub(n).map(|j| &b[j]);
        out.push(match (da, db) {
            (Some(x), None) | (None, Some(x)) => x.clone(),
            (Some(x), Some(y)) if x == y => x.clone(),
            (Some(Dim::Const(1)), Some(y)) => y.clone(),
            (Some(x), Some(Dim::Const(1))) => x.clone(),
            _ => return None,
        });
    }
    Some(out)
}

/// `x` broadcasts to `target`'s shape (numpy rules, one direction): `x` has
/// no more axes, and each of its axes, aligned on the right, has length 1 or
/// the target's length.
fn broadcasts_to(x: &TensorType, target: &TensorType) -> Result<(), String> {
    let lead = target
        .rank()
        .checked_sub(x.rank())
        .ok_or_else(|| format!("{x} has more axes than the reference {target} it broadcasts to"))?;
    for (i, d) in x.shape.iter().enumerate() {
        let want = &target.shape[lead + i];
        if d != want && *d != Dim::Const(1) {
            return Err(format!(
                "{x} does not broadcast to {target}: axis {i} has length {d}, \
                 expected 1 or {want}"
            ));
        }
    }
    Ok(())
}

/// `scatter_add(ref, idx, src) {axis}`: a float `src` of `ref`'s rank that
/// matches `ref` on every axis but `axis`, and integer indices of exactly
/// `src`'s shape.
fn check_scatter_operands(op: &Op, t: &[&TensorType]) -> Result<(), String> {
    let (r, idx, src) = (t[0], t[1], t[2]);
    let a = axis_of(op, r, "axis")?;
    int(1, idx)?;
    float(2, src)?;
    index_fits(idx, r, a, "operand 0 (reference)")?;
    let mut want = idx.shape.clone();
    want.extend_from_slice(&r.shape[idx.rank()..]);
    if src.shape != want {
        return Err(format!(
            "operand 2 (src) {src} must be shaped like the indices {idx} followed by the reference {r}'s trailing axes, {}",
            TensorType::new(src.dtype, want)
        ));
    }
    Ok(())
}

/// Indices `idx` of a `gather`/`scatter_add` along `axis` of `data`: of rank
/// `k` with `axis < k <= rank(data)`, and matching `data` on every axis
/// below `k` but `axis`. Axes of `data` from `k` on are taken whole (a
/// `k = rank - 1` index picks rows), so the index need not repeat per element.
fn index_fits(idx: &TensorType, data: &TensorType, axis: usize, what: &str) -> Result<(), String> {
    let k = idx.rank();
    if k <= axis || k > data.rank() {
        return Err(format!(
            "indices {idx} must have rank {}..={} (above the axis {axis}, at most that of {what} {data})",
            axis + 1,
            data.rank()
        ));
    }
    if (0..k).any(|i| i != axis && idx.shape[i] != data.shape[i]) {
        return Err(format!(
            "indices {idx} must match {what} {data} on its first {k} axes but {axis}"
        ));
    }
    Ok(())
}

/// `heads` divides a constant width.
fn heads_divide(op: &Op, width: &Dim) -> Result<(), String> {
    let h = op.int("heads").unwrap_or(1) as u64;
    match width {
        Dim::Const(w) if w % h != 0 => Err(format!("width {w} is not divisible by heads={h}")),
        _ => Ok(()),
    }
}

fn check_attention_operands(op: &Op, t: &[&TensorType]) -> Result<(), String> {
    for (i, x) in t.iter().take(3).enumerate() {
        float(i, x)?;
        rank(i, x, 3)?;
    }
    let (q, k, v) = (t[0], t[1], t[2]);
    if q.shape[0] != k.shape[0] || k.shape[0] != v.shape[0] {
        return Err(format!("batch dims differ: {q}, {k}, {v}"));
    }
    if k.shape[1] != v.shape[1] {
        return Err(format!("keys and values differ in length: {k}, {v}"));
    }
    if q.shape[2] != k.shape[2] {
        return Err(format!("queries and keys differ in width: {q}, {k}"));
    }
    heads_divide(op, &q.shape[2])?;
    heads_divide(op, &v.shape[2])?;
    if let Some(m) = t.get(3) {
        check_mask(3, m, &k.shape[0], &k.shape[1])?;
    }
    Ok(())
}

fn check_mask(i: usize, m: &TensorType, b: &Dim, l: &Dim) -> Result<(), String> {
    if !(m.dtype.is_int() || m.dtype == DType::Bool) || m.shape != [b.clone(), l.clone()] {
        return Err(format!(
            "operand {i} (mask) must be an integer or bool [{b},{l}] tensor, found {m}"
        ));
    }
    Ok(())
}

fn width(t: &TensorType, heads: u64) -> Result<u64, String> {
    match t.shape.last() {
        Some(Dim::Const(w)) if w % heads == 0 => Ok(w / heads),
        _ => Err(format!(
            "last axis of {t} must be a constant multiple of heads={heads}"
        )),
    }
}

fn same_except(r: &TensorType, x: &TensorType, axis: usize) -> Result<(), String> {
    let ok = r.dtype == x.dtype
        && r.rank() == x.rank()
        && (0..x.rank()).all(|i| i == axis || r.shape[i] == x.shape[i]);
    if ok {
        Ok(())
    } else {
        Err(format!("result {r} must equal {x} except on axis {axis}"))
    }
}
