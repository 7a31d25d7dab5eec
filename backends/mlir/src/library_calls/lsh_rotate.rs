//! The LSH hashing's rotation product as a library call: the contraction
//! `rotated[b, h, r, t, j] += Σ_k x[b, t, h, k] R[h, k, r, j]` that
//! `lsh_hash` emits per tile of positions, on the runtime's GEMM
//! ([`reformc_runtime::attention::lsh_rotate`]), which sums over `k` in the
//! same order with the same fused multiply-adds as the loops would: the
//! bucket decisions do not change.

use super::{contiguous, record, unflatten, Descriptor};
use reformc_runtime::attention::{lsh_rotate, RotateStrides};

/// The `library_call` of the rotation contraction (f32).
pub const NAME: &str = "reformc_lsh_rotate_f32";

/// `_mlir_ciface_reformc_lsh_rotate_f32(x, rot, y)`: `x` `[B, T, H, d]`,
/// `rot` `[H, d, r, S/2]`, `y` `[B, H, r, T, S/2]` (zero-filled by the
/// module; the product is added to it).
///
/// # Safety
/// Each pointer is a valid descriptor of the rank in its type over a live
/// f32 buffer holding every element its sizes and strides reach, as the
/// lowered `func.call` passes them; `y`'s buffer is not read or written by
/// anyone else during the call.
pub(super) unsafe extern "C" fn call(
    x: *const Descriptor<4>,
    rot: *const Descriptor<4>,
    y: *const Descriptor<5>,
) {
    // SAFETY: the caller passes valid descriptors (the contract above).
    let (x, rot, y) = unsafe { (&*x, &*rot, &*y) };
    if let Err(e) = rotate(x, rot, y) {
        record(format!("{NAME}: {e}"));
    }
}

/// The sizes `(B, T, H, d, r, S/2)` of a well-formed call.
fn sizes(x: &Descriptor<4>, rot: &Descriptor<4>, y: &Descriptor<5>) -> Result<[usize; 6], String> {
    let [b, t, h, d] = x.sizes;
    let [rh, rd, r, half] = rot.sizes;
    if [rh, rd] != [h, d] || y.sizes != [b, h, r, t, half] {
        return Err(format!(
            "operand shapes {:?}, {:?} -> {:?} do not form the rotation product",
            x.sizes, rot.sizes, y.sizes
        ));
    }
    let to = |v: i64| usize::try_from(v).map_err(|_| format!("negative size {v}"));
    Ok([to(b)?, to(t)?, to(h)?, to(d)?, to(r)?, to(half)?])
}

/// The runtime kernel when `x`'s last axis is contiguous and `rot`, `y` are
/// contiguous (as the module lays them out); the plain loop otherwise.
fn rotate(x: &Descriptor<4>, rot: &Descriptor<4>, y: &Descriptor<5>) -> Result<(), String> {
    let [b, t, h, d, r, half] = sizes(x, rot, y)?;
    let stride = |i: usize| usize::try_from(x.strides[i]).ok();
    let strides = match (stride(0), stride(1), stride(2), x.strides[3]) {
        (Some(batch), Some(pos), Some(head), 1) => Some(RotateStrides { batch, pos, head }),
        _ => None,
    };
    let (Some(st), Some(rv), Some(yv), Ok(off)) = (
        strides,
        contiguous(rot),
        contiguous(y),
        usize::try_from(x.offset),
    ) else {
        // SAFETY: every index the loop forms is one the sizes allow.
        unsafe { rotate_loop(x, rot, y) };
        return Ok(());
    };
    if [b, t, h, d, r, half].contains(&0) {
        return Ok(());
    }
    let span = (b - 1) * st.batch + (t - 1) * st.pos + (h - 1) * st.head + d;
    let xs = x.aligned.wrapping_add(off);
    let (ys, ye) = (yv.0 as usize, yv.0 as usize + 4 * yv.1);
    let apart = |p: usize, len: usize| p + 4 * len <= ys || p >= ye;
    if !apart(xs as usize, span) || !apart(rv.0 as usize, rv.1) {
        return Err("the result overlaps an operand".to_string());
    }
    // SAFETY: each slice is elements its descriptor reaches, inside a live
    // buffer (the caller's contract); y shares none with x or rot (checked)
    // and no one else touches it during the call.
    let (xv, rv, yv) = unsafe {
        (
            std::slice::from_raw_parts(xs, span),
            std::slice::from_raw_parts(rv.0, rv.1),
            std::slice::from_raw_parts_mut(yv.0, yv.1),
        )
    };
    // `y` holds zeros (the module fills it): the kernel stores the sums.
    lsh_rotate(xv, st, rv, b, t, h, d, r, half, yv).map_err(|e| e.to_string())
}

/// `y += x · rot` element by element through the strides, each sum in the
/// loops' order with fused multiply-adds.
///
/// # Safety
/// As [`call`].
unsafe fn rotate_loop(x: &Descriptor<4>, rot: &Descriptor<4>, y: &Descriptor<5>) {
    let d = x.sizes[3];
    let total: i64 = y.sizes.iter().product();
    let mut yi = [0i64; 5];
    for flat in 0..total.max(0) {
        unflatten(flat, &y.sizes, &mut yi);
        let [bi, hi, ri, ti, j] = yi;
        let yp = y.at(&yi);
        // SAFETY: in-range indices of y, x and rot (the contract).
        let mut acc = unsafe { *yp };
        for k in 0..d {
            let xv = unsafe { *x.at(&[bi, ti, hi, k]) };
            let rv = unsafe { *rot.at(&[hi, k, ri, j]) };
            acc = xv.mul_add(rv, acc);
        }
        unsafe { *yp = acc };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc<const R: usize>(data: &mut [f32], sizes: [i64; R], strides: [i64; R]) -> Descriptor<R> {
        Descriptor {
            allocated: data.as_mut_ptr(),
            aligned: data.as_mut_ptr(),
            offset: 0,
            sizes,
            strides,
        }
    }

    /// The kernel (x a strided view, as the tile loop passes it) and the loop
    /// (x transposed, which the kernel does not take) give the same bits.
    #[test]
    fn kernel_and_loop_agree_bit_for_bit() {
        let (b, t, h, d, r, half) = (1i64, 40i64, 2i64, 64i64, 2i64, 12i64);
        let val = |i: usize| ((i * 7919 % 1000) as f32 - 500.0) / 131.0;
        // x inside a [B, 2T, H, d] buffer (a tile of a longer sequence).
        let mut xb: Vec<f32> = (0..(b * 2 * t * h * d) as usize).map(val).collect();
        let mut rb: Vec<f32> = (0..(h * d * r * half) as usize)
            .map(|i| val(i + 3))
            .collect();
        let n = (b * h * r * t * half) as usize;
        let (mut y1, mut y2) = (vec![0.0f32; n], vec![0.0f32; n]);
        let x = desc(&mut xb, [b, t, h, d], [2 * t * h * d, h * d, d, 1]);
        let rot = desc(&mut rb, [h, d, r, half], [d * r * half, r * half, half, 1]);
        let ys = [h * r * t * half, r * t * half, t * half, half, 1];
        let y = desc(&mut y1, [b, h, r, t, half], ys);
        rotate(&x, &rot, &y).unwrap();
        let yl = desc(&mut y2, [b, h, r, t, half], ys);
        // SAFETY: in-range descriptors over live buffers.
        unsafe { rotate_loop(&x, &rot, &yl) };
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        if reformc_runtime::gemm::kernel().isa != "scalar" {
            assert_eq!(bits(&y1), bits(&y2));
        }
        assert!(y1
            .iter()
            .zip(&y2)
            .all(|(a, b)| (a - b).abs() <= 1e-4 * (1.0 + b.abs())));
    }

    #[test]
    fn mismatched_shapes_are_an_error() {
        let mut xb = vec![0.0f32; 8];
        let mut rb = vec![0.0f32; 8];
        let mut yb = vec![0.0f32; 8];
        let x = desc(&mut xb, [1, 2, 1, 4], [8, 4, 4, 1]);
        let rot = desc(&mut rb, [1, 3, 1, 2], [6, 2, 2, 1]);
        let y = desc(&mut yb, [1, 1, 1, 2, 2], [4, 4, 4, 2, 1]);
        assert!(rotate(&x, &rot, &y).unwrap_err().contains("do not form"));
    }
}
