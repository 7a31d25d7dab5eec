//! Memref descriptors as the C interface of a lowered `@forward` passes them:
//! building one for a tensor, and copying a returned one out. Shared by the
//! CPU and GPU pipelines' runners.

use ndarray::{ArrayD, IxDyn};
use reformc_ir::DType;
use reformc_tensor::Tensor;

/// `t` in row-major standard layout.
pub fn standard(t: &Tensor) -> Tensor {
    match t {
        Tensor::F32(a) => Tensor::F32(a.as_standard_layout().into_owned()),
        Tensor::F64(a) => Tensor::F64(a.as_standard_layout().into_owned()),
        Tensor::I64(a) => Tensor::I64(a.as_standard_layout().into_owned()),
        Tensor::I32(a) => Tensor::I32(a.as_standard_layout().into_owned()),
        Tensor::Bool(a) => Tensor::Bool(a.as_standard_layout().into_owned()),
    }
}

/// The address of a standard-layout tensor's first element.
pub fn data_ptr(t: &Tensor) -> i64 {
    match t {
        Tensor::F32(a) => a.as_ptr() as i64,
        Tensor::F64(a) => a.as_ptr() as i64,
        Tensor::I64(a) => a.as_ptr() as i64,
        Tensor::I32(a) => a.as_ptr() as i64,
        // `bool` is one byte holding 0 or 1, as an `i1` memref element is stored.
        Tensor::Bool(a) => a.as_ptr() as i64,
    }
}

/// A memref descriptor of a standard-layout tensor, as the C interface lays
/// it out, all fields 8 bytes: allocated pointer, aligned pointer, offset,
/// sizes, strides.
///
/// ```
/// use reformc_tensor::Tensor;
/// let t = Tensor::F32(ndarray::ArrayD::zeros(ndarray::IxDyn(&[2, 3])));
/// let d = reformc_backend_mlir::memref::descriptor(&t);
/// assert_eq!(&d[2..], &[0, 2, 3, 3, 1]);
/// ```
pub fn descriptor(t: &Tensor) -> Vec<i64> {
    descriptor_at(data_ptr(t), t.shape())
}

/// [`descriptor`] of a row-major buffer of `shape` at address `ptr`.
pub fn descriptor_at(ptr: i64, shape: &[usize]) -> Vec<i64> {
    let mut d = vec![ptr, ptr, 0];
    d.extend(shape.iter().map(|&s| s as i64));
    let mut strides = vec![1i64; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1] as i64;
    }
    d.extend(strides);
    d
}

/// Copies a strided memref of `T` out of a returned descriptor.
///
/// # Safety
/// `d` is a descriptor of rank `rank` whose buffer holds `T`s at every index
/// of its sizes and strides, alive for the call.
pub unsafe fn read<T: Copy>(d: &[i64], rank: usize) -> ArrayD<T> {
    let base = d[1] as *const T;
    let offset = d[2] as isize;
    let shape: Vec<usize> = d[3..3 + rank].iter().map(|&s| s as usize).collect();
    let strides = &d[3 + rank..3 + 2 * rank];
    let n: usize = shape.iter().product();
    if is_row_major(&shape, strides) {
        // SAFETY: a row-major memref's `n` elements lie contiguous from its
        // first one (the contract: every index of its sizes is valid).
        let data = unsafe { std::slice::from_raw_parts(base.offset(offset), n) }.to_vec();
        return ArrayD::from_shape_vec(IxDyn(&shape), data).expect("shape and element count agree");
    }
    let mut data = Vec::with_capacity(n);
    let mut idx = vec![0usize; rank];
    for _ in 0..n {
        let lin: isize = idx
            .iter()
            .zip(strides)
            .map(|(&i, &s)| i as isize * s as isize)
            .sum();
        // SAFETY: the memref returned by the compiled function holds `shape`
        // elements of `T` at `offset + sum(index * stride)` from its aligned
        // pointer (freed by `invoke` only after this copy).
        data.push(unsafe { *base.offset(offset + lin) });
        for k in (0..rank).rev() {
            idx[k] += 1;
            if idx[k] < shape[k] {
                break;
            }
            idx[k] = 0;
        }
    }
    ArrayD::from_shape_vec(IxDyn(&shape), data).expect("shape and element count agree")
}

/// Whether `strides` are the row-major strides of `shape` (axes of size 1
/// may have any stride).
fn is_row_major(shape: &[usize], strides: &[i64]) -> bool {
    let mut want = 1usize;
    for (&n, &s) in shape.iter().zip(strides).rev() {
        if n != 1 && usize::try_from(s) != Ok(want) {
            return false;
        }
        want = want.saturating_mul(n);
    }
    true
}

/// The result descriptors a call wrote into `result`, one per output of
/// `(dtype, rank)`.
pub fn split_results<'r>(result: &'r [i64], outs: &[(DType, usize)]) -> Vec<&'r [i64]> {
    let mut at = 0;
    outs.iter()
        .map(|&(_, r)| {
            let d = &result[at..at + 3 + 2 * r];
            at += 3 + 2 * r;
            d
        })
        .collect()
}

/// A returned descriptor copied out as a tensor of `dtype`.
///
/// # Safety
/// As [`read`], for the element type of `dtype` (`bool` stored one byte each).
pub unsafe fn read_tensor(d: &[i64], dtype: DType, rank: usize) -> Tensor {
    // SAFETY: forwarded contract.
    unsafe {
        match dtype {
            DType::F32 => Tensor::F32(read::<f32>(d, rank)),
            DType::F64 => Tensor::F64(read::<f64>(d, rank)),
            DType::I64 => Tensor::I64(read::<i64>(d, rank)),
            DType::I32 => Tensor::I32(read::<i32>(d, rank)),
            DType::Bool => Tensor::Bool(read::<u8>(d, rank).mapv(|b| b & 1 != 0)),
        }
    }
}

/// Calls `@forward` of `engine` through its C interface
/// (`_mlir_ciface_forward`, with the module's static initialiser run first)
/// on argument descriptors `args`; returns the result descriptors, laid out
/// as [`split_results`] reads them for `outs`.
///
/// # Safety
/// The engine's `@forward` has results of `outs`' dtypes and ranks and
/// arguments described by `args`, each over a live buffer of its shape that
/// stays alive for the call.
pub unsafe fn invoke(
    engine: &melior::ExecutionEngine,
    args: &mut [Vec<i64>],
    outs: &[(DType, usize)],
) -> Result<Vec<i64>, melior::Error> {
    let mut result = vec![0i64; outs.iter().map(|(_, r)| 3 + 2 * r).sum()];
    let mut ptrs: Vec<*mut i64> = std::iter::once(result.as_mut_ptr())
        .chain(args.iter_mut().map(|d| d.as_mut_ptr()))
        .collect();
    let mut packed: Vec<*mut ()> = ptrs
        .iter_mut()
        .map(|p| p as *mut *mut i64 as *mut ())
        .collect();
    // SAFETY: `_mlir_ciface_forward` takes a pointer to its result struct
    // (laid out like `result`) and one pointer to each argument's
    // descriptor; `packed` points at those pointers (see the contract).
    unsafe { engine.invoke_packed("forward", &mut packed)? };
    Ok(result)
}

/// The results of one call ([`invoke`]) copied out as tensors.
///
/// # Safety
/// `result` was filled by a call whose results have `outs`' dtypes and ranks,
/// and none of their buffers was freed.
pub unsafe fn read_results(result: &[i64], outs: &[(DType, usize)]) -> Vec<Tensor> {
    split_results(result, outs)
        .iter()
        .zip(outs)
        // SAFETY: forwarded contract.
        .map(|(d, &(dtype, r))| unsafe { read_tensor(d, dtype, r) })
        .collect()
}

/// Frees the buffers of the results of one call with `free`, once per
/// distinct allocation (two results may share one).
///
/// # Safety
/// The results' buffers were handed to the caller (allocated by the
/// allocator `free` releases) and are not used afterwards.
pub unsafe fn free_results(
    result: &[i64],
    outs: &[(DType, usize)],
    mut free: impl FnMut(*mut std::ffi::c_void),
) {
    let mut seen: Vec<i64> = Vec::new();
    for d in split_results(result, outs) {
        if d[0] != 0 && !seen.contains(&d[0]) {
            seen.push(d[0]);
            free(d[0] as *mut std::ffi::c_void);
        }
    }
}
