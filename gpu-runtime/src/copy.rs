//! `memrefCopy`: a strided copy between two memrefs of one shape, as MLIR's
//! C runner utilities define it (their library is not linked into reformc's
//! GPU programs).

/// An unranked memref as the LLVM lowering passes it: the rank and a pointer
/// to the ranked descriptor `{allocated, aligned, offset, sizes[rank],
/// strides[rank]}` (all 8 bytes).
#[repr(C)]
pub struct Unranked {
    rank: i64,
    descriptor: *const i64,
}

/// The fields of one ranked descriptor.
struct View<'a> {
    base: *mut u8,
    offset: i64,
    sizes: &'a [i64],
    strides: &'a [i64],
}

/// # Safety
/// `u.descriptor` points at a ranked descriptor of rank `u.rank`.
unsafe fn view(u: &Unranked) -> View<'_> {
    let r = u.rank.max(0) as usize;
    // SAFETY: the descriptor holds 3 + 2·rank 8-byte fields.
    let d = unsafe { std::slice::from_raw_parts(u.descriptor, 3 + 2 * r) };
    View {
        base: d[1] as *mut u8,
        offset: d[2],
        sizes: &d[3..3 + r],
        strides: &d[3 + r..3 + 2 * r],
    }
}

/// Copies every element of `src` to the same index of `dst`.
///
/// # Safety
/// See [`crate::entry::memrefCopy`].
pub(crate) unsafe fn copy(elem: usize, src: &Unranked, dst: &Unranked) {
    // SAFETY: forwarded contract.
    unsafe { copy_views(elem, &view(src), &view(dst)) }
}

/// [`copy`] between two ranked descriptors (`{allocated, aligned, offset,
/// sizes, strides}`, as [`crate::descriptor`] builds them): how a host
/// program copies a strided result into a dense buffer.
///
/// # Safety
/// Both descriptors have one rank and describe valid buffers of
/// `elem`-byte elements of `src`'s sizes.
pub unsafe fn copy_strided(elem: usize, src: &[i64], dst: &[i64]) {
    let ranked = |d: &[i64]| Unranked {
        rank: ((d.len().max(3) - 3) / 2) as i64,
        descriptor: d.as_ptr(),
    };
    // SAFETY: forwarded contract.
    unsafe { copy(elem, &ranked(src), &ranked(dst)) }
}

/// Copies every element of view `s` to the same index of `d`.
///
/// # Safety
/// As [`copy`].
unsafe fn copy_views(elem: usize, s: &View, d: &View) {
    let n: i64 = s.sizes.iter().product();
    if n <= 0 || s.sizes.len() != d.sizes.len() {
        return;
    }
    let rank = s.sizes.len();
    let mut idx = vec![0i64; rank];
    for _ in 0..n {
        let at = |v: &View| -> isize {
            let lin: i64 = v.offset + idx.iter().zip(v.strides).map(|(i, s)| i * s).sum::<i64>();
            lin as isize * elem as isize
        };
        // SAFETY: both views describe valid buffers of their sizes, and the
        // index is within them.
        unsafe { std::ptr::copy_nonoverlapping(s.base.offset(at(s)), d.base.offset(at(d)), elem) };
        for k in (0..rank).rev() {
            idx[k] += 1;
            if idx[k] < s.sizes[k] {
                break;
            }
            idx[k] = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(buf: &mut [f32], offset: i64, sizes: &[i64], strides: &[i64]) -> Vec<i64> {
        let p = buf.as_mut_ptr() as i64;
        let mut d = vec![p, p, offset];
        d.extend(sizes);
        d.extend(strides);
        d
    }

    #[test]
    fn copies_a_transposed_view_into_a_dense_one() {
        let mut src: Vec<f32> = (0..6).map(|i| i as f32).collect();
        let mut dst = vec![0f32; 6];
        // src viewed as its 3x2 transpose.
        let sd = desc(&mut src, 0, &[3, 2], &[1, 3]);
        let dd = desc(&mut dst, 0, &[3, 2], &[2, 1]);
        let (su, du) = (
            Unranked {
                rank: 2,
                descriptor: sd.as_ptr(),
            },
            Unranked {
                rank: 2,
                descriptor: dd.as_ptr(),
            },
        );
        // SAFETY: both descriptors describe 6 floats in live buffers.
        unsafe { copy(4, &su, &du) };
        assert_eq!(dst, vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    }

    #[test]
    fn honours_offsets_and_rank_zero() {
        let mut src = vec![1f32, 2.0, 3.0];
        let mut dst = vec![0f32; 3];
        let sd = desc(&mut src, 2, &[], &[]);
        let dd = desc(&mut dst, 1, &[], &[]);
        let (su, du) = (
            Unranked {
                rank: 0,
                descriptor: sd.as_ptr(),
            },
            Unranked {
                rank: 0,
                descriptor: dd.as_ptr(),
            },
        );
        // SAFETY: one float at offset 2 and 1 of live buffers.
        unsafe { copy(4, &su, &du) };
        assert_eq!(dst, vec![0.0, 3.0, 0.0]);
    }
}
