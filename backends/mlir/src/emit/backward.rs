//! The ops that serve the backward pass and are not elementwise:
//! `broadcast` and `scatter_add` (`act_grad` is an elementwise
//! `linalg.generic`, see `Emitter::elementwise`).

use super::{tensor_ty, Emitter, Operand};
use crate::scalar::elt;
use crate::MlirError;
use reformc_ir::ValueId;

impl Emitter<'_> {
    /// `broadcast(x, ref)`: a parallel `linalg.generic` over the result
    /// (`ref`'s shape) reading `x` through its broadcast indexing map.
    pub(super) fn broadcast(&mut self, v: ValueId) -> Result<String, MlirError> {
        let node = self.g.node(v);
        let (x, out_ty) = (node.inputs[0], node.ty.clone());
        if self.g.ty(x).rank() > out_ty.rank() {
            return Err(MlirError::invalid(
                self.g,
                v,
                "broadcast operand of higher rank than its reference",
            ));
        }
        let ins = [self.broadcast_operand(x, &out_ty.shape)];
        let init = self.init(v, &out_ty.shape, out_ty.dtype, None)?;
        let ty = tensor_ty(&out_ty);
        let out = Operand {
            name: init,
            ty: ty.clone(),
            map: Self::identity(out_ty.rank()),
        };
        let iters = vec!["parallel"; out_ty.rank()];
        let r = self.generic(&ins, out, &iters, elt(out_ty.dtype), |_, a| a[0].clone());
        Ok(self.alias(&r, &ty))
    }

    /// `scatter_add(ref, idx, src) {axis}`: a `linalg.generic` over the
    /// result (parallel) and the source's `axis` (a reduction loop `k`,
    /// innermost): each result element starts at zero and adds `src[.., k, ..]`
    /// where `idx[.., k, ..]` equals its own `axis` coordinate. For one result
    /// element the matching sources come in ascending `k`, which is their
    /// row-major order, so the sums are the interpreter's bit for bit.
    /// Indices outside the axis match no element and add nothing (the
    /// interpreter reports them as errors).
    pub(super) fn scatter_add(&mut self, v: ValueId) -> Result<String, MlirError> {
        let node = self.g.node(v);
        let (idx, src, out_ty) = (node.inputs[1], node.inputs[2], node.ty.clone());
        let (i_ty, s_ty) = (self.g.ty(idx).clone(), self.g.ty(src).clone());
        let rank = out_ty.rank();
        let axis = self.axis(v, "axis", rank)?;
        let k = i_ty.rank();
        if k <= axis || k > rank || s_ty.rank() != rank || !i_ty.dtype.is_int() {
            return Err(MlirError::invalid(
                self.g,
                v,
                "scatter_add takes integer indices of a rank above the axis and a source of the result's rank",
            ));
        }
        // Loops d0..d<rank-1> over the result, d<rank> over the source axis.
        let src_map: Vec<String> = (0..rank)
            .map(|i| {
                let d = if i == axis { rank } else { i };
                format!("d{d}")
            })
            .collect();
        // The index's map is the source's first k coordinates.
        let operand = |x: ValueId, t: &reformc_ir::TensorType| Operand {
            name: format!("%v{}", x.0),
            ty: tensor_ty(t),
            map: src_map[..t.rank()].to_vec(),
        };
        let ins = [operand(idx, &i_ty), operand(src, &s_ty)];
        let init = self.init(v, &out_ty.shape, out_ty.dtype, Some(0.0))?;
        let ty = tensor_ty(&out_ty);
        let out = Operand {
            name: init,
            ty: ty.clone(),
            map: Self::identity(rank),
        };
        let mut iters = vec!["parallel"; rank];
        iters.push("reduction");
        let (ie, fe) = (elt(i_ty.dtype), elt(out_ty.dtype));
        let r = self.generic(&ins, out, &iters, fe, |b, a| {
            let here = b.def(format!("linalg.index {axis} : index"));
            let here = b.def(format!("arith.index_cast {here} : index to {ie}"));
            let hit = b.def(format!("arith.cmpi eq, {}, {here} : {ie}", a[0]));
            let sum = b.def(format!("arith.addf {}, {} : {fe}", a[2], a[1]));
            b.def(format!("arith.select {hit}, {sum}, {} : {fe}", a[2]))
        });
        Ok(self.alias(&r, &ty))
    }
}
