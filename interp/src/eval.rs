//! The graph walker: binds inputs, checks every result against its declared
//! type (binding symbolic dims as it goes) and dispatches each op.

use crate::attention::{self, MaskRules};
use crate::tensor::{FloatTensor, Real, Tensor};
use crate::{lm_loss, nn, philox, tensor_ops as ops};
use ndarray::{ArrayD, IxDyn};
use reformc_ir::{
    Activation, DType, Dim, DimEnv, Graph, Node, OpKind, TensorType, UnaryFn, ValueId,
};
use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// Where and why evaluation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterpError {
    /// The value as the printer names it (`%12`), or `input "name"`.
    pub at: String,
    /// The op's keyword (empty for binding errors).
    pub op: String,
    /// What went wrong (a type mismatch, a missing input or weight, an op failure).
    pub message: String,
}

impl fmt::Display for InterpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.op.is_empty() {
            write!(f, "{}: {}", self.at, self.message)
        } else {
            write!(f, "{} = {}: {}", self.at, self.op, self.message)
        }
    }
}

impl std::error::Error for InterpError {}

/// Where weights come from: a lookup by tensor name.
pub trait WeightSource {
    /// The tensor stored under `name`, if any.
    fn weight(&self, name: &str) -> Option<Tensor>;
}

impl WeightSource for BTreeMap<String, Tensor> {
    fn weight(&self, name: &str) -> Option<Tensor> {
        self.get(name).cloned()
    }
}

impl WeightSource for HashMap<String, Tensor> {
    fn weight(&self, name: &str) -> Option<Tensor> {
        self.get(name).cloned()
    }
}

/// Runs `g` on named inputs and weights; returns the named outputs.
///
/// Weights of a float dtype are converted to the dtype the graph declares, so
/// one f32 safetensors file serves both the f32 and the f64 graph.
///
/// ```
/// use reformc_interp::{run, Tensor};
/// use ndarray::{ArrayD, IxDyn};
/// use std::collections::BTreeMap;
/// let g = reformc_ir::parse("graph {\n %0 = input {name=\"x\"} : f64[N]\n %1 = exp %0 : f64[N]\n output \"y\" = %1\n}").unwrap();
/// let mut inputs = BTreeMap::new();
/// inputs.insert("x".to_string(), Tensor::F64(ArrayD::from_shape_vec(IxDyn(&[2]), vec![0.0, 1.0]).unwrap()));
/// let out = run(&g, &inputs, &BTreeMap::new()).unwrap();
/// assert_eq!(out["y"].as_f64().unwrap()[[1]], 1f64.exp());
/// ```
pub fn run(
    g: &Graph,
    inputs: &BTreeMap<String, Tensor>,
    weights: &dyn WeightSource,
) -> Result<BTreeMap<String, Tensor>, InterpError> {
    let numbering = g
        .walk()
        .into_iter()
        .enumerate()
        .map(|(i, v)| (v, i))
        .collect();
    let mut ev = Evaluator {
        g,
        inputs,
        weights,
        env: DimEnv::new(),
        values: HashMap::new(),
        numbering,
        uses: use_counts(g),
    };
    for (name, _) in g.inputs() {
        if !inputs.contains_key(name) {
            return Err(InterpError {
                at: format!("input {name:?}"),
                op: String::new(),
                message: "no value was given for this graph input".into(),
            });
        }
    }
    ev.block(&g.body)?;
    let mut out = BTreeMap::new();
    for (name, v) in &g.outputs {
        out.insert(name.clone(), ev.values[v].clone());
    }
    Ok(out)
}

/// The shape a `reshape` to `ty` of `count` elements gives: every dim
/// bound, except at most one new symbol, which the element count determines
/// (as the LLVM backend infers it); the result check then binds it.
fn reshape_dims(ty: &TensorType, count: usize, env: &DimEnv) -> Result<Vec<usize>, String> {
    let mut unknown = None;
    let mut known = 1usize;
    let mut dims = Vec::with_capacity(ty.rank());
    for (axis, d) in ty.shape.iter().enumerate() {
        match d.eval(env) {
            Some(n) => {
                known = known.saturating_mul(n as usize);
                dims.push(n as usize);
            }
            None if unknown.is_none() => {
                unknown = Some(axis);
                dims.push(0);
            }
            None => return Err(format!("{ty} has more than one unbound symbol")),
        }
    }
    if let Some(axis) = unknown {
        dims[axis] = match (count, known) {
            (0, 0) => 0,
            (c, k) if k > 0 && c % k == 0 => c / k,
            _ => return Err(format!("{count} elements do not reshape to {ty}")),
        };
    }
    Ok(dims)
}

/// How many times each value is used (operands, region results, graph outputs:
/// the IR's use lists), so that intermediate tensors are freed after their last use.
fn use_counts(g: &Graph) -> HashMap<ValueId, usize> {
    let uses = reformc_ir::UseLists::new(g);
    g.walk()
        .into_iter()
        .chain(g.outputs.iter().map(|(_, v)| *v))
        .map(|v| (v, uses.count(v)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

struct Evaluator<'a> {
    g: &'a Graph,
    inputs: &'a BTreeMap<String, Tensor>,
    weights: &'a dyn WeightSource,
    env: DimEnv,
    values: HashMap<ValueId, Tensor>,
    numbering: HashMap<ValueId, usize>,
    uses: HashMap<ValueId, usize>,
}

impl Evaluator<'_> {
    fn err(&self, v: ValueId, message: String) -> InterpError {
        let node = self.g.node(v);
        // Values bound by name are named by it; the others by their number.
        let named = matches!(node.op.kind, OpKind::Input | OpKind::Weight);
        let at = if named {
            format!("{} {:?}", node.op.kind, node.op.str("name").unwrap_or(""))
        } else {
            format!("%{}", self.numbering.get(&v).copied().unwrap_or(usize::MAX))
        };
        InterpError {
            at,
            op: if named {
                String::new()
            } else {
                node.op.kind.name().into()
            },
            message,
        }
    }

    fn block(&mut self, body: &[ValueId]) -> Result<(), InterpError> {
        for &v in body {
            let node = self.g.node(v);
            let result = self.eval(node).map_err(|m| self.err(v, m))?;
            let result = self.conform(node, result).map_err(|m| self.err(v, m))?;
            self.values.insert(v, result);
            for i in &node.inputs {
                self.release(*i);
            }
        }
        Ok(())
    }

    fn release(&mut self, v: ValueId) {
        if let Some(n) = self.uses.get_mut(&v) {
            *n -= 1;
            if *n == 0 {
                self.values.remove(&v);
            }
        }
    }

    /// Checks `t` against the declared type, binding unbound symbols.
    /// Float weights and inputs are converted to the declared float dtype first.
    fn conform(&mut self, node: &Node, t: Tensor) -> Result<Tensor, String> {
        let ty = &node.ty;
        let bound = matches!(node.op.kind, OpKind::Weight | OpKind::Input);
        let t = if bound && t.dtype().is_float() && ty.dtype.is_float() {
            t.cast(ty.dtype)
        } else {
            t
        };
        check_type(ty, &t, &mut self.env)?;
        Ok(t)
    }

    fn operand(&self, node: &Node, i: usize) -> &Tensor {
        &self.values[&node.inputs[i]]
    }

    fn eval(&mut self, node: &Node) -> Result<Tensor, String> {
        // Integer-valued ops dispatch on their operands inside eval_float; only the
        // result dtype picks the float kernels.
        match node.ty.dtype {
            DType::F64 => self.eval_float::<f64>(node),
            _ => self.eval_float::<f32>(node),
        }
    }

    fn float<T: FloatTensor>(&self, node: &Node, i: usize) -> Result<&ArrayD<T>, String> {
        let t = self.operand(node, i);
        T::borrow(t).ok_or_else(|| {
            format!(
                "operand {i} has dtype {}, expected the result's float dtype",
                t.dtype()
            )
        })
    }

    fn mask(&self, node: &Node, i: usize) -> Option<ArrayD<i64>> {
        node.inputs.get(i).map(|_| self.operand(node, i).to_i64())
    }

    fn eval_float<T: FloatTensor>(&mut self, node: &Node) -> Result<Tensor, String> {
        use OpKind::*;
        let op = &node.op;
        let attr = |name: &str| op.usize(name).unwrap_or(0);
        let rules = MaskRules {
            causal: op.flag("causal"),
            self_mask: op.flag("self_mask"),
        };
        Ok(match op.kind {
            Arg => unreachable!("region arguments are bound by their owner"),
            Input => {
                let name = op.str("name").unwrap_or("");
                self.inputs
                    .get(name)
                    .cloned()
                    .ok_or_else(|| format!("no value was given for input {name:?}"))?
            }
            Weight => {
                let name = op.str("name").unwrap_or("");
                self.weights
                    .weight(name)
                    .ok_or_else(|| format!("no weight named {name:?}"))?
            }
            Constant => {
                let v = op.float("value").unwrap_or(0.0);
                Tensor::F64(ArrayD::from_elem(IxDyn(&[]), v)).cast(node.ty.dtype)
            }
            RandomNormal => {
                let seed = self
                    .operand(node, 0)
                    .to_i64()
                    .iter()
                    .next()
                    .copied()
                    .unwrap_or(0) as u64;
                let shape = self.concrete_shape(&node.ty)?;
                let n = shape.iter().product();
                let data = philox::normals(seed, attr("stream") as u64, n);
                Tensor::F64(ArrayD::from_shape_vec(IxDyn(&shape), data).expect("count"))
                    .cast(node.ty.dtype)
            }
            DropoutMask => {
                let seed = self
                    .operand(node, 0)
                    .to_i64()
                    .iter()
                    .next()
                    .copied()
                    .unwrap_or(0) as u64;
                let shape = self.operand(node, 1).shape().to_vec();
                let p = op.float("p").unwrap_or(0.0);
                let data =
                    philox::dropout_mask(seed, attr("stream") as u64, p, shape.iter().product());
                Tensor::F64(ArrayD::from_shape_vec(IxDyn(&shape), data).expect("count"))
                    .cast(node.ty.dtype)
            }
            Embedding => T::wrap(nn::embedding(
                &self.operand(node, 0).to_i64(),
                self.float::<T>(node, 1)?,
            )?),
            AxialPosEmbedding => T::wrap(nn::axial_pos_embedding(
                &self.operand(node, 0).to_i64(),
                self.float::<T>(node, 1)?,
                self.float::<T>(node, 2)?,
            )?),
            LayerNorm => T::wrap(nn::layer_norm(
                self.float::<T>(node, 0)?,
                self.float::<T>(node, 1)?,
                self.float::<T>(node, 2)?,
                op.float("eps").unwrap_or(1e-12),
            )),
            Linear => {
                let bias = if node.inputs.len() > 2 {
                    Some(self.float::<T>(node, 2)?)
                } else {
                    None
                };
                T::wrap(nn::linear(
                    self.float::<T>(node, 0)?,
                    self.float::<T>(node, 1)?,
                    bias,
                    op.activation()?,
                )?)
            }
            Attention => {
                let (q, k, v) = (
                    self.float::<T>(node, 0)?,
                    self.float::<T>(node, 1)?,
                    self.float::<T>(node, 2)?,
                );
                let scale = op.float("scale").unwrap_or(1.0);
                let (m, heads, key_norm) = (self.mask(node, 3), attr("heads"), op.flag("key_norm"));
                T::wrap(match op.usize("kv_chunk") {
                    Some(kv) => attention::attention_chunked(
                        q,
                        k,
                        v,
                        m.as_ref(),
                        heads,
                        scale,
                        key_norm,
                        rules,
                        kv,
                    )?,
                    None => {
                        attention::attention(q, k, v, m.as_ref(), heads, scale, key_norm, rules)?
                    }
                })
            }
            LocalAttention => {
                let (q, k, v) = (
                    self.float::<T>(node, 0)?,
                    self.float::<T>(node, 1)?,
                    self.float::<T>(node, 2)?,
                );
                let scale = op.float("scale").unwrap_or(1.0);
                let m = self.mask(node, 3);
                T::wrap(attention::local_attention(
                    q,
                    k,
                    v,
                    m.as_ref(),
                    attr("heads"),
                    scale,
                    attr("chunk"),
                    attr("before"),
                    attr("after"),
                    op.flag("causal"),
                )?)
            }
            LshHash => {
                let factors: Vec<usize> = op
                    .ints("buckets")
                    .unwrap_or(&[])
                    .iter()
                    .map(|&f| f as usize)
                    .collect();
                let qk = self.float_any(node, 0)?;
                let rot = self.float_any(node, 1)?;
                let m = self.mask(node, 2);
                Tensor::I64(match (&qk, &rot) {
                    (Tensor::F32(a), Tensor::F32(b)) => {
                        attention::lsh_hash(a, b, m.as_ref(), attr("heads"), &factors)?
                    }
                    (Tensor::F64(a), Tensor::F64(b)) => {
                        attention::lsh_hash(a, b, m.as_ref(), attr("heads"), &factors)?
                    }
                    _ => return Err("query/keys and rotations must share a float dtype".into()),
                })
            }
            LshAttention => {
                let (qk, v) = (self.float::<T>(node, 0)?, self.float::<T>(node, 1)?);
                let buckets = self.operand(node, 2).to_i64();
                let m = self.mask(node, 3);
                T::wrap(attention::lsh_attention(
                    qk,
                    v,
                    &buckets,
                    m.as_ref(),
                    attr("heads"),
                    attr("chunk"),
                    attr("before"),
                    attr("after"),
                    op.flag("causal"),
                )?)
            }
            LocalAttentionGrad => {
                let (q, k, v) = (
                    self.float::<T>(node, 0)?,
                    self.float::<T>(node, 1)?,
                    self.float::<T>(node, 2)?,
                );
                let (y, dy) = (self.float::<T>(node, 3)?, self.float::<T>(node, 4)?);
                let m = self.mask(node, 5);
                T::wrap(attention::local_attention_grad(
                    q,
                    k,
                    v,
                    y,
                    dy,
                    m.as_ref(),
                    attr("heads"),
                    op.float("scale").unwrap_or(1.0),
                    attr("chunk"),
                    attr("before"),
                    attr("after"),
                    op.flag("causal"),
                )?)
            }
            LshAttentionGrad => {
                let (qk, v) = (self.float::<T>(node, 0)?, self.float::<T>(node, 1)?);
                let buckets = self.operand(node, 2).to_i64();
                let (y, dy) = (self.float::<T>(node, 3)?, self.float::<T>(node, 4)?);
                let m = self.mask(node, 5);
                T::wrap(attention::lsh_attention_grad(
                    qk,
                    v,
                    &buckets,
                    y,
                    dy,
                    m.as_ref(),
                    attr("heads"),
                    attr("chunk"),
                    attr("before"),
                    attr("after"),
                    op.flag("causal"),
                )?)
            }
            ReversibleBlock => T::wrap(self.reversible::<T>(node)?),
            SeqChunk => self.seq_chunk(node)?,
            PadToMultiple => ops::pad_to_multiple(
                self.operand(node, 0),
                attr("axis"),
                attr("multiple"),
                attr("min_len"),
                op.float("value").unwrap_or(0.0),
            ),
            Truncate => {
                let n = self.operand(node, 1).shape()[attr("axis")];
                ops::slice(self.operand(node, 0), attr("axis"), 0, n)?
            }
            Iota => {
                let n = self.operand(node, 0).shape()[attr("axis")];
                Tensor::I64(ArrayD::from_shape_fn(IxDyn(&[n]), |i| i[0] as i64))
            }
            Index => ops::index(self.operand(node, 0), attr("axis"), attr("index"))?,
            Slice => ops::slice(
                self.operand(node, 0),
                attr("axis"),
                attr("start"),
                attr("end"),
            )?,
            Add | Sub | Mul | Div | Max | Min | Lt | Eq => {
                let f = op.kind.binary_fn().ok_or("not a binary elementwise op")?;
                ops::binary(f, self.operand(node, 0), self.operand(node, 1))?
            }
            Neg => match self.operand(node, 0) {
                Tensor::I64(a) => Tensor::I64(a.mapv(|x| -x)),
                Tensor::I32(a) => Tensor::I32(a.mapv(|x| -x)),
                _ => T::wrap(ops::unary(
                    UnaryFn::Neg,
                    Activation::None,
                    self.float::<T>(node, 0)?,
                )),
            },
            Exp | Log | Sqrt | Rsqrt | Tanh | Act => {
                let f = op.kind.unary_fn().ok_or("not a unary elementwise op")?;
                T::wrap(ops::unary(f, op.activation()?, self.float::<T>(node, 0)?))
            }
            Cast => self.operand(node, 0).cast(node.ty.dtype),
            Matmul => T::wrap(ops::matmul(
                self.float::<T>(node, 0)?,
                self.float::<T>(node, 1)?,
            )?),
            Reduce => {
                let axes: Vec<usize> = op
                    .ints("axes")
                    .unwrap_or(&[])
                    .iter()
                    .map(|&a| a as usize)
                    .collect();
                T::wrap(ops::reduce(
                    self.float::<T>(node, 0)?,
                    op.reduction()?,
                    &axes,
                    op.flag("keepdim"),
                ))
            }
            Softmax => T::wrap(ops::softmax(self.float::<T>(node, 0)?, attr("axis"))),
            Gather => ops::gather(
                self.operand(node, 0),
                &self.operand(node, 1).to_i64(),
                attr("axis"),
            )?,
            Argmax => Tensor::I64(ops::argmax(self.operand(node, 0), attr("axis"))),
            Argsort => Tensor::I64(ops::argsort(self.operand(node, 0), attr("axis"))),
            Select => match self.operand(node, 0) {
                Tensor::Bool(c) => ops::select(c, self.operand(node, 1), self.operand(node, 2))?,
                other => return Err(format!("condition must be bool, found {}", other.dtype())),
            },
            Reshape => {
                let x = self.operand(node, 0);
                let shape = reshape_dims(&node.ty, x.shape().iter().product(), &self.env)?;
                ops::reshape(self.operand(node, 0), &shape)?
            }
            Transpose => {
                let perm: Vec<usize> = op
                    .ints("perm")
                    .unwrap_or(&[])
                    .iter()
                    .map(|&a| a as usize)
                    .collect();
                ops::transpose(self.operand(node, 0), &perm)
            }
            Concat => {
                let xs: Vec<&Tensor> = (0..node.inputs.len())
                    .map(|i| self.operand(node, i))
                    .collect();
                ops::concat(&xs, attr("axis"))?
            }
            Broadcast => {
                let shape = self.operand(node, 1).shape().to_vec();
                ops::broadcast_to(self.operand(node, 0), &shape)?
            }
            ScatterAdd => {
                let shape = self.operand(node, 0).shape().to_vec();
                T::wrap(ops::scatter_add(
                    &shape,
                    &self.operand(node, 1).to_i64(),
                    self.float::<T>(node, 2)?,
                    attr("axis"),
                )?)
            }
            ActGrad => T::wrap(ops::act_grad(
                op.activation()?,
                self.float::<T>(node, 0)?,
                self.float::<T>(node, 1)?,
            )?),
            LmLoss => T::wrap(lm_loss::lm_loss(
                self.float::<T>(node, 0)?,
                self.float::<T>(node, 1)?,
                &self.operand(node, 2).to_i64(),
            )?),
            FeedForward | FeedForwardGrad => {
                let w: Vec<&ArrayD<T>> = (1..7)
                    .map(|i| self.float::<T>(node, i))
                    .collect::<Result<_, _>>()?;
                let ff = crate::feed_forward::FeedForward {
                    ln_w: w[0],
                    ln_b: w[1],
                    w1: w[2],
                    b1: w[3],
                    w2: w[4],
                    b2: w[5],
                    eps: op.float("eps").unwrap_or(1e-12),
                    act: op.activation()?,
                };
                let x = self.float::<T>(node, 0)?;
                T::wrap(match op.kind {
                    FeedForward => ff.forward(x)?,
                    _ => ff.grad(x, self.float::<T>(node, 7)?, op.str("wrt").unwrap_or(""))?,
                })
            }
            LayerNormGrad => T::wrap(nn::layer_norm_grad(
                self.float::<T>(node, 0)?,
                self.float::<T>(node, 1)?,
                self.float::<T>(node, 2)?,
                op.float("eps").unwrap_or(1e-12),
                op.str("wrt") == Some("x"),
            )),
            LmLossGrad => {
                let dy = self.float::<T>(node, 3)?.iter().next().copied();
                T::wrap(lm_loss::lm_loss_grad(
                    self.float::<T>(node, 0)?,
                    self.float::<T>(node, 1)?,
                    &self.operand(node, 2).to_i64(),
                    dy.unwrap_or_else(T::zero),
                    op.str("wrt") == Some("h"),
                )?)
            }
        })
    }

    fn float_any(&self, node: &Node, i: usize) -> Result<Tensor, String> {
        let t = self.operand(node, i);
        if t.dtype().is_float() {
            Ok(t.clone())
        } else {
            Err(format!(
                "operand {i} must be a float tensor, found {}",
                t.dtype()
            ))
        }
    }

    /// The declared shape with every symbol bound.
    fn concrete_shape(&self, ty: &TensorType) -> Result<Vec<usize>, String> {
        ty.shape
            .iter()
            .map(|d| {
                d.eval(&self.env)
                    .map(|x| x as usize)
                    .ok_or_else(|| format!("dimension {d} of {ty} is not bound yet"))
            })
            .collect()
    }

    /// y1 = x1 + f(x2); y2 = x2 + g(y1) on the halves of the last axis.
    fn reversible<T: FloatTensor>(&mut self, node: &Node) -> Result<ArrayD<T>, String> {
        let x = self.float::<T>(node, 0)?;
        let (x1, x2) = nn::split_halves(x);
        let fx = self.region::<T>(node, 0, T::wrap(x2.clone()))?;
        let y1 = x1 + &fx;
        let gy = self.region::<T>(node, 1, T::wrap(y1.clone()))?;
        let y2 = x2 + &gy;
        let last = ndarray::Axis(y1.ndim() - 1);
        ndarray::concatenate(last, &[y1.view(), y2.view()]).map_err(|e| e.to_string())
    }

    /// `seq_chunk`: the body on consecutive slices of `size` along `axis`
    /// (the last one may be shorter; an empty axis is one empty chunk), the
    /// results concatenated along `axis`. Symbols bound inside the body (the
    /// chunk symbol first) are scoped to one chunk, and the use counts of the
    /// body's values are replayed for every chunk.
    fn seq_chunk(&mut self, node: &Node) -> Result<Tensor, String> {
        let axis = node.op.usize("axis").unwrap_or(0);
        let size = node.op.usize("size").unwrap_or(1).max(1);
        let x = self.operand(node, 0).clone();
        let n = *x
            .shape()
            .get(axis)
            .ok_or_else(|| format!("axis {axis} is out of range for {:?}", x.shape()))?;
        let region = &node.regions[0];
        let (arg, result) = (region.args[0], region.results[0]);
        let starts: Vec<usize> = if n == 0 {
            vec![0]
        } else {
            (0..n).step_by(size).collect()
        };
        // Values the body defines get their use counts back before every
        // chunk; outer values it uses are kept alive until the last chunk.
        let mut inner = Vec::new();
        let mut outer_uses = Vec::new();
        region_values(self.g, region, &mut inner, &mut outer_uses);
        let inner_set: std::collections::HashSet<ValueId> = inner.iter().copied().collect();
        let extra = starts.len() - 1;
        for v in &outer_uses {
            if !inner_set.contains(v) {
                *self.uses.entry(*v).or_default() += extra;
            }
        }
        let counts: Vec<(ValueId, Option<usize>)> = inner
            .iter()
            .map(|v| (*v, self.uses.get(v).copied()))
            .collect();
        let mut outs = Vec::with_capacity(starts.len());
        for start in starts {
            let end = (start + size).min(n);
            let chunk = ops::slice(&x, axis, start, end)?;
            for (v, c) in &counts {
                if let Some(c) = c {
                    self.uses.insert(*v, *c);
                }
            }
            let env = self.env.clone();
            let out = (|| {
                check_type(self.g.ty(arg), &chunk, &mut self.env)?;
                self.values.insert(arg, chunk);
                self.block(&region.body).map_err(|e| e.to_string())?;
                let out = self
                    .values
                    .get(&result)
                    .cloned()
                    .ok_or_else(|| "region result was not computed".to_string())?;
                self.release(result);
                Ok::<Tensor, String>(out)
            })();
            self.env = env;
            outs.push(out?);
        }
        let refs: Vec<&Tensor> = outs.iter().collect();
        ops::concat(&refs, axis)
    }

    fn region<T: FloatTensor>(
        &mut self,
        node: &Node,
        index: usize,
        arg: Tensor,
    ) -> Result<ArrayD<T>, String> {
        let region = &node.regions[index];
        let a = region.args[0];
        check_type(self.g.ty(a), &arg, &mut self.env)?;
        self.values.insert(a, arg);
        self.block(&region.body).map_err(|e| e.to_string())?;
        let r = region.results[0];
        let out = self
            .values
            .get(&r)
            .cloned()
            .ok_or("region result was not computed")?;
        self.release(r);
        T::borrow(&out)
            .cloned()
            .ok_or_else(|| format!("region yields {}, expected the input's dtype", out.dtype()))
    }
}

/// Every value `region` defines (arguments and nested regions included) into
/// `inner`, and every use its ops and yields make into `uses`.
fn region_values(
    g: &Graph,
    region: &reformc_ir::Region,
    inner: &mut Vec<ValueId>,
    uses: &mut Vec<ValueId>,
) {
    inner.extend(region.args.iter().copied());
    uses.extend(region.results.iter().copied());
    for &v in &region.body {
        inner.push(v);
        let n = g.node(v);
        uses.extend(n.inputs.iter().copied());
        for r in &n.regions {
            region_values(g, r, inner, uses);
        }
    }
}

/// Checks a runtime tensor against a declared type, binding unbound symbols.
///
/// ```
/// use reformc_interp::{check_type, Tensor};
/// use reformc_ir::{DimEnv, parse};
/// let g = parse("graph {\n %0 = input {name=\"x\"} : i64[B,4]\n output \"x\" = %0\n}").unwrap();
/// let ty = g.ty(g.outputs[0].1).clone();
/// let mut env = DimEnv::new();
/// check_type(&ty, &Tensor::zeros(reformc_ir::DType::I64, &[3, 4]), &mut env).unwrap();
/// assert_eq!(env["B"], 3);
/// let err = check_type(&ty, &Tensor::zeros(reformc_ir::DType::I64, &[2, 4]), &mut env).unwrap_err();
/// assert!(err.contains("B=3"));
/// ```
pub fn check_type(ty: &TensorType, t: &Tensor, env: &mut DimEnv) -> Result<(), String> {
    let found = || format!("{}{:?}", t.dtype(), t.shape());
    if t.dtype() != ty.dtype || t.shape().len() != ty.rank() {
        return Err(format!("expected {ty}, found {}", found()));
    }
    for (d, &n) in ty.shape.iter().zip(t.shape()) {
        match d {
            Dim::Const(c) if *c != n as u64 => {
                return Err(format!("expected {ty}, found {}", found()))
            }
            Dim::Sym(s) => match env.get(s) {
                Some(&bound) if bound != n as u64 => {
                    return Err(format!("expected {ty} with {s}={bound}, found {}", found()));
                }
                Some(_) => {}
                None => {
                    env.insert(s.clone(), n as u64);
                }
            },
            _ => {}
        }
    }
    Ok(())
}

#[doc(hidden)]
pub fn _assert_real<T: Real>() {}
