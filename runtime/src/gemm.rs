//! fp32 GEMM: register-blocked micro-kernels chosen at run time (AVX-512,
//! AVX2+FMA, portable scalar), a packed right-hand side, and the `linear`
//! kernel (`y = act(x·wᵀ + b)`) threaded over row blocks.
//!
//! Every output element is one multiply-add chain over `k` in increasing
//! order (a partial result stored to C and loaded back continues the same
//! chain), so results do not depend on blocking, tiling or the thread count.

use crate::act::{Activation, Apply};
use crate::bf16::{self, Packing};
use crate::error::{invalid, try_zeroed, Result};
use crate::pool::{par_for, SharedMut};
use std::cell::RefCell;
use std::sync::OnceLock;

/// Arguments of one micro-kernel call: `C[R×NR] (+)= A[R×k]·B[k×NR]` for the
/// kernel's row count `R` (1..=MR), then
/// `+ bias` and relu if asked. `a` has row stride `lda` and column stride
/// `a_ks` (1 for row-major, the stored row length for a transposed A); `b` is a
/// packed panel (`k` rows of `NR` contiguous values; with AMX tiles, column
/// groups of 16 that start `b_group` words apart); `c` has row stride `ldc`.
#[derive(Clone, Copy)]
pub(crate) struct Micro {
    pub k: usize,
    pub a: *const f32,
    pub lda: usize,
    pub a_ks: usize,
    pub b: *const f32,
    /// Words from one 16-column group of a [`Packing::Tiles`] panel to the
    /// next (unused by other packings).
    pub b_group: usize,
    pub c: *mut f32,
    pub ldc: usize,
    pub accumulate: bool,
    /// `NR` values or null.
    pub bias: *const f32,
    pub relu: bool,
}

pub(crate) type MicroFn = unsafe fn(&Micro);

/// A micro-kernel and its register tile.
#[derive(Clone, Copy)]
pub struct Kernel {
    /// Rows of the register tile.
    pub mr: usize,
    /// Columns of the register tile (width of a packed panel).
    pub nr: usize,
    /// Instruction set the kernel uses.
    pub isa: &'static str,
    /// `f[i]` computes tiles of `i + 1` rows (the last entry is the full `MR`).
    f: &'static [MicroFn],
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}x{}", self.isa, self.mr, self.nr)
    }
}

/// Portable kernel: plain multiply and add (no fused multiply-add).
///
/// # Safety
/// `p` must describe valid memory for a full `MR×NR` tile (see [`Micro`]).
unsafe fn scalar_kernel<const MR: usize, const NR: usize>(p: &Micro) {
    let mut acc = [[0.0f32; NR]; MR];
    if p.accumulate {
        for (i, row) in acc.iter_mut().enumerate() {
            for (j, x) in row.iter_mut().enumerate() {
                // SAFETY: C holds MR rows of NR values at stride ldc (contract of `p`).
                *x = unsafe { *p.c.add(i * p.ldc + j) };
            }
        }
    }
    for kk in 0..p.k {
        // SAFETY: the packed panel holds k rows of NR values.
        let b: &[f32] = unsafe { std::slice::from_raw_parts(p.b.add(kk * NR), NR) };
        for (i, row) in acc.iter_mut().enumerate() {
            // SAFETY: A holds MR rows of at least k values at strides lda, a_ks.
            let a = unsafe { *p.a.add(i * p.lda + kk * p.a_ks) };
            for (x, &bj) in row.iter_mut().zip(b) {
                *x += a * bj;
            }
        }
    }
    for (i, row) in acc.iter_mut().enumerate() {
        for (j, x) in row.iter_mut().enumerate() {
            if !p.bias.is_null() {
                // SAFETY: a non-null bias holds NR values.
                *x += unsafe { *p.bias.add(j) };
            }
            if p.relu && (x.is_nan() || *x <= 0.0) {
                *x = 0.0;
            }
            // SAFETY: C holds MR rows of NR values at stride ldc.
            unsafe { *p.c.add(i * p.ldc + j) = *x };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Micro;
    use std::arch::x86_64::*;

    /// A register-blocked micro-kernel for one vector ISA: `MR` rows × `NV`
    /// vectors of `$w` columns, accumulating `k` broadcast-A × B-row FMAs.
    macro_rules! micro_kernel {
        ($(#[$doc:meta])* $name:ident, $feature:literal, $w:literal, $zero:ident, $load:ident,
         $store:ident, $set1:ident, $fmadd:ident, $add:ident, $max:ident) => {
            $(#[$doc])*
            ///
            /// # Safety
            #[doc = concat!("The CPU must support ", $feature, ", and `p` must describe a full tile.")]
            #[target_feature(enable = $feature)]
            pub(super) unsafe fn $name<const MR: usize, const NV: usize>(p: &Micro) {
                let mut acc = [[$zero(); NV]; MR];
                if p.accumulate {
                    for (i, row) in acc.iter_mut().enumerate() {
                        for (v, x) in row.iter_mut().enumerate() {
                            // SAFETY: C holds MR rows of $w·NV values at stride ldc.
                            *x = unsafe { $load(p.c.add(i * p.ldc + $w * v)) };
                        }
                    }
                }
                let (mut a, mut b) = (p.a, p.b);
                for _ in 0..p.k {
                    let mut bv = [$zero(); NV];
                    for (v, x) in bv.iter_mut().enumerate() {
                        // SAFETY: the packed panel holds k rows of $w·NV values; b walks them.
                        *x = unsafe { $load(b.add($w * v)) };
                    }
                    for (i, row) in acc.iter_mut().enumerate() {
                        // SAFETY: A holds MR rows of k values at strides lda, a_ks; a walks the columns.
                        let av = $set1(unsafe { *a.add(i * p.lda) });
                        for (x, &bj) in row.iter_mut().zip(&bv) {
                            *x = $fmadd(av, bj, *x);
                        }
                    }
                    // SAFETY: stays within (or one past) the A rows and the panel.
                    unsafe {
                        a = a.add(p.a_ks);
                        b = b.add($w * NV);
                    }
                }
                if !p.bias.is_null() {
                    for v in 0..NV {
                        // SAFETY: a non-null bias holds $w·NV values.
                        let bias = unsafe { $load(p.bias.add($w * v)) };
                        for row in acc.iter_mut() {
                            row[v] = $add(row[v], bias);
                        }
                    }
                }
                if p.relu {
                    // max_ps returns the second operand for NaN: NaN -> 0 like `x > 0 ? x : 0`.
                    let zero = $zero();
                    acc.iter_mut().flatten().for_each(|x| *x = $max(*x, zero));
                }
                for (i, row) in acc.iter().enumerate() {
                    for (v, x) in row.iter().enumerate() {
                        // SAFETY: C holds MR rows of $w·NV values at stride ldc.
                        unsafe { $store(p.c.add(i * p.ldc + $w * v), *x) };
                    }
                }
            }
        };
    }

    /// The 32 bf16 values in the bits of `x`.
    #[inline(always)]
    fn bh(x: __m512i) -> __m512bh {
        // SAFETY: both are 512-bit vectors with no invalid bit patterns.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(x) }
    }

    /// AVX-512 BF16 kernel: `MR` rows × `NV` vectors of 16 columns; A's
    /// words and the panel's hold bf16 pairs along k (`p.k` counts pairs),
    /// each `vdpbf16ps` adds two products per lane to the f32 accumulators.
    ///
    /// # Safety
    /// The CPU must support AVX-512F and AVX-512 BF16, and `p` must describe a
    /// full tile of pairs.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn avx512bf16<const MR: usize, const NV: usize>(p: &Micro) {
        let mut acc = [[_mm512_setzero_ps(); NV]; MR];
        if p.accumulate {
            for (i, row) in acc.iter_mut().enumerate() {
                for (v, x) in row.iter_mut().enumerate() {
                    // SAFETY: C holds MR rows of 16·NV values at stride ldc.
                    *x = unsafe { _mm512_loadu_ps(p.c.add(i * p.ldc + 16 * v)) };
                }
            }
        }
        let (mut a, mut b) = (p.a.cast::<i32>(), p.b.cast::<__m512i>());
        for _ in 0..p.k {
            let mut bv = [_mm512_setzero_si512(); NV];
            for (v, x) in bv.iter_mut().enumerate() {
                // SAFETY: the packed panel holds k rows of 16·NV words; b walks them.
                *x = unsafe { _mm512_loadu_si512(b.add(v)) };
            }
            for (i, row) in acc.iter_mut().enumerate() {
                // SAFETY: A holds MR rows of k words at strides lda, a_ks.
                let av = bh(_mm512_set1_epi32(unsafe { *a.add(i * p.lda) }));
                for (x, &bj) in row.iter_mut().zip(&bv) {
                    *x = _mm512_dpbf16_ps(*x, av, bh(bj));
                }
            }
            // SAFETY: stays within (or one past) the A rows and the panel.
            unsafe {
                a = a.add(p.a_ks);
                b = b.add(NV);
            }
        }
        if !p.bias.is_null() {
            for v in 0..NV {
                // SAFETY: a non-null bias holds 16·NV values.
                let bias = unsafe { _mm512_loadu_ps(p.bias.add(16 * v)) };
                for row in acc.iter_mut() {
                    row[v] = _mm512_add_ps(row[v], bias);
                }
            }
        }
        if p.relu {
            let zero = _mm512_setzero_ps();
            acc.iter_mut()
                .flatten()
                .for_each(|x| *x = _mm512_max_ps(*x, zero));
        }
        for (i, row) in acc.iter().enumerate() {
            for (v, x) in row.iter().enumerate() {
                // SAFETY: C holds MR rows of 16·NV values at stride ldc.
                unsafe { _mm512_storeu_ps(p.c.add(i * p.ldc + 16 * v), *x) };
            }
        }
    }

    micro_kernel!(
        /// AVX-512 kernel: `MR` rows × `NV` vectors of 16 columns.
        avx512, "avx512f", 16, _mm512_setzero_ps, _mm512_loadu_ps, _mm512_storeu_ps,
        _mm512_set1_ps, _mm512_fmadd_ps, _mm512_add_ps, _mm512_max_ps
    );
    micro_kernel!(
        /// AVX2+FMA kernel: `MR` rows × `NV` vectors of 8 columns.
        avx2, "avx2,fma", 8, _mm256_setzero_ps, _mm256_loadu_ps, _mm256_storeu_ps,
        _mm256_set1_ps, _mm256_fmadd_ps, _mm256_add_ps, _mm256_max_ps
    );
}

/// Every kernel usable on this CPU, best first.
pub fn available_kernels() -> Vec<Kernel> {
    let mut out = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        use x86::{avx2, avx512};
        if std::arch::is_x86_feature_detected!("avx512f") {
            out.push(Kernel {
                mr: 6,
                nr: 64,
                isa: "avx512",
                f: &[
                    avx512::<1, 4>,
                    avx512::<2, 4>,
                    avx512::<3, 4>,
                    avx512::<4, 4>,
                    avx512::<5, 4>,
                    avx512::<6, 4>,
                ],
            });
            out.push(Kernel {
                mr: 12,
                nr: 32,
                isa: "avx512",
                f: &[
                    avx512::<1, 2>,
                    avx512::<2, 2>,
                    avx512::<3, 2>,
                    avx512::<4, 2>,
                    avx512::<5, 2>,
                    avx512::<6, 2>,
                    avx512::<7, 2>,
                    avx512::<8, 2>,
                    avx512::<9, 2>,
                    avx512::<10, 2>,
                    avx512::<11, 2>,
                    avx512::<12, 2>,
                ],
            });
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            out.push(Kernel {
                mr: 6,
                nr: 16,
                isa: "avx2+fma",
                f: &[
                    avx2::<1, 2>,
                    avx2::<2, 2>,
                    avx2::<3, 2>,
                    avx2::<4, 2>,
                    avx2::<5, 2>,
                    avx2::<6, 2>,
                ],
            });
        }
    }
    out.push(Kernel {
        mr: 4,
        nr: 16,
        isa: "scalar",
        f: &[
            scalar_kernel::<1, 16>,
            scalar_kernel::<2, 16>,
            scalar_kernel::<3, 16>,
            scalar_kernel::<4, 16>,
        ],
    });
    out
}

/// Largest `MR × NR` of any kernel (size of the stack scratch tile): the
/// AMX kernels' [`crate::amx::MR`] rows of a 64-column panel.
const MAX_TILE: usize = crate::amx::MR * 64;

/// The kernel every GEMM in this process uses (the best one for this CPU;
/// `REFORMC_RT_KERNEL=avx512|avx2|scalar` forces a narrower one).
pub fn kernel() -> &'static Kernel {
    static K: OnceLock<Kernel> = OnceLock::new();
    K.get_or_init(|| {
        let all = available_kernels();
        let wanted = std::env::var("REFORMC_RT_KERNEL").ok();
        wanted
            .and_then(|w| all.iter().find(|k| k.isa.starts_with(w.as_str())).copied())
            .unwrap_or(all[0])
    })
}

/// A right-hand side packed for a kernel: `ceil(n/NR)` panels of `k × NR`
/// values (zero-padded past column `n`), or with bf16 [`Packing::Pairs`],
/// of `ceil(k/2) × NR` words each holding two rows' bf16 values.
pub(crate) struct PackedB {
    pub data: Panels,
    pub n: usize,
    pub k: usize,
    pub nr: usize,
    /// How `data` holds the values (the packing thread's precision).
    pub packing: Packing,
}

/// Where a packed matrix's values live: the heap, or (a weight kept for the
/// process, [`crate::prepack`]) a mapping of its own.
pub(crate) enum Panels {
    Heap(Vec<f32>),
    Mapped(crate::mapped::MappedF32),
}

impl std::ops::Deref for Panels {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match self {
            Panels::Heap(v) => v,
            Panels::Mapped(m) => m,
        }
    }
}

impl std::ops::DerefMut for Panels {
    fn deref_mut(&mut self) -> &mut [f32] {
        match self {
            Panels::Heap(v) => v,
            Panels::Mapped(m) => m,
        }
    }
}

impl PackedB {
    /// Number of panels.
    pub fn panels(&self) -> usize {
        self.n.div_ceil(self.nr)
    }

    /// Rows of one panel as stored: `k`, or `ceil(k/2)` pairs.
    pub fn stored_k(&self) -> usize {
        self.packing.stored_rows(self.k)
    }

    /// A zeroed packed matrix for `k × n` held as `packing` says (the caller
    /// fills it: the attention tiles, which pack keys and values themselves).
    pub fn zeroed_as(k: usize, n: usize, nr: usize, packing: Packing) -> Result<Self> {
        let rows = packing.stored_rows(k);
        let data = try_zeroed(n.div_ceil(nr) * nr * rows, "packed matrix")?;
        Ok(PackedB {
            data: Panels::Heap(data),
            n,
            k,
            nr,
            packing,
        })
    }

    /// Packs `wᵀ` where `w` is `[n, k]` row-major with row stride `ldw`
    /// (the `linear` weight layout).
    pub fn from_nt(w: &[f32], n: usize, k: usize, ldw: usize, nr: usize) -> Result<Self> {
        let packing = bf16::packing(kernel().isa);
        if packing != Packing::F32 {
            return Self::from_fn(k, n, nr, packing, |kk, j| w[j * ldw + kk]);
        }
        let data = filled_panels(n.div_ceil(nr), k * nr, |panel, dst| {
            for jj in 0..nr.min(n - panel * nr) {
                let row = &w[(panel * nr + jj) * ldw..][..k];
                for (kk, &x) in row.iter().enumerate() {
                    dst[kk * nr + jj] = x;
                }
            }
        })?;
        Ok(PackedB {
            data: Panels::Heap(data),
            n,
            k,
            nr,
            packing,
        })
    }

    /// Packs `b` given as `[k, n]` row-major with row stride `ldb`.
    pub fn from_kn(b: &[f32], k: usize, n: usize, ldb: usize, nr: usize) -> Result<Self> {
        let packing = bf16::packing(kernel().isa);
        if packing.is_pairs() {
            return Self::pairs_from_kn(b, k, n, ldb, nr, packing);
        }
        if packing != Packing::F32 {
            return Self::from_fn(k, n, nr, packing, |kk, j| b[kk * ldb + j]);
        }
        let data = filled_panels(n.div_ceil(nr), k * nr, |panel, dst| {
            let cols = nr.min(n - panel * nr);
            for kk in 0..k {
                dst[kk * nr..kk * nr + cols].copy_from_slice(&b[kk * ldb + panel * nr..][..cols]);
            }
        })?;
        Ok(PackedB {
            data: Panels::Heap(data),
            n,
            k,
            nr,
            packing,
        })
    }

    /// [`from_kn`](Self::from_kn) as bf16 pairs: rows `2r` and `2r + 1` of
    /// `b` are both contiguous along a panel's columns, so each pair row of a
    /// panel is one vector pass ([`bf16::pair_rows_into`]) per run of
    /// columns (the panel, or a tile's group), where
    /// [`from_fn`](Self::from_fn) walked `b` down its columns. The same words.
    fn pairs_from_kn(
        b: &[f32],
        k: usize,
        n: usize,
        ldb: usize,
        nr: usize,
        packing: Packing,
    ) -> Result<Self> {
        let rows = k.div_ceil(2);
        let data = filled_panels(n.div_ceil(nr), rows * nr, |panel, dst| {
            let (c0, cols) = (panel * nr, nr.min(n - panel * nr));
            for r in 0..rows {
                prefetch_rows(&b[c0..], 2 * (r + PAIR_AHEAD), k, ldb, cols);
                for (j, len, at) in packing.row_runs(rows, nr, r, cols) {
                    let lo = &b[2 * r * ldb + c0 + j..][..len];
                    let hi = (2 * r + 1 < k).then(|| &b[(2 * r + 1) * ldb + c0 + j..][..len]);
                    bf16::pair_rows_into(lo, hi, &mut dst[at..at + len]);
                }
            }
        })?;
        Ok(PackedB {
            data: Panels::Heap(data),
            n,
            k,
            nr,
            packing,
        })
    }

    /// Packs element `(kk, j) = at(kk, j)` of a `k × n` matrix as `packing`
    /// says (the bf16 layouts).
    pub(crate) fn from_fn(
        k: usize,
        n: usize,
        nr: usize,
        packing: Packing,
        at: impl Fn(usize, usize) -> f32 + Sync,
    ) -> Result<Self> {
        let rows = packing.stored_rows(k);
        let data = filled_panels(n.div_ceil(nr), rows * nr, |panel, dst| {
            for jj in 0..nr.min(n - panel * nr) {
                let j = panel * nr + jj;
                for r in 0..rows {
                    dst[packing.offset(rows, nr, r, jj)] = match packing {
                        Packing::Pairs | Packing::Tiles => {
                            let hi = if 2 * r + 1 < k { at(2 * r + 1, j) } else { 0.0 };
                            f32::from_bits(bf16::pair(at(2 * r, j), hi))
                        }
                        _ => bf16::round(at(r, j)),
                    };
                }
            }
        })?;
        Ok(PackedB {
            data: Panels::Heap(data),
            n,
            k,
            nr,
            packing,
        })
    }
}

/// Matrices at least this large (elements) are packed by the pool's threads.
const PARALLEL_PACK: usize = 1 << 18;

/// `panels` panels of `len` values, each zeroed and then written by
/// `fill(panel, values)`; for large matrices (a weight) the panels are
/// packed in parallel, and each task zeroes its own panels, so that the
/// fresh pages are also first touched (faulted in) on every thread.
fn filled_panels(
    panels: usize,
    len: usize,
    fill: impl Fn(usize, &mut [f32]) + Sync,
) -> Result<Vec<f32>> {
    let total = panels
        .checked_mul(len)
        .ok_or_else(|| invalid("packed matrix: size overflows".to_string()))?;
    if total < PARALLEL_PACK {
        let mut data = try_zeroed(total, "packed matrix")?;
        for (panel, dst) in data.chunks_exact_mut(len.max(1)).enumerate() {
            fill(panel, dst);
        }
        return Ok(data);
    }
    let mut data: Vec<f32> = Vec::new();
    data.try_reserve_exact(total).map_err(|_| {
        crate::error::Error::OutOfMemory(format!(
            "cannot allocate a packed matrix of {total} values"
        ))
    })?;
    let spare = SharedMut::new(&mut data.spare_capacity_mut()[..total]);
    par_for(panels, |panel| {
        // SAFETY: panel `panel` alone is written by this task.
        let dst = unsafe { spare.slice(panel * len, len) };
        for x in dst.iter_mut() {
            x.write(0.0);
        }
        // SAFETY: every element of `dst` was just initialised, and
        // MaybeUninit<f32> has f32's layout.
        let dst = unsafe { &mut *(dst as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]) };
        fill(panel, dst);
    })?;
    // SAFETY: the tasks initialised every panel, `panels × len = total`
    // elements within the capacity reserved above, and all have finished.
    unsafe { data.set_len(total) };
    Ok(data)
}

/// What happens to C after the product.
#[derive(Clone, Copy)]
pub(crate) struct Epilogue<'a> {
    /// Add the product to C's current contents instead of overwriting.
    pub accumulate: bool,
    /// Per-column bias (padded to whole panels), added after the product.
    pub bias: Option<&'a [f32]>,
    /// Activation after the bias.
    pub act: Activation,
}

impl Epilogue<'_> {
    /// Plain `C = A·B`.
    pub const STORE: Epilogue<'static> = Epilogue {
        accumulate: false,
        bias: None,
        act: Activation::None,
    };
    /// `C += A·B`.
    pub const ACCUMULATE: Epilogue<'static> = Epilogue {
        accumulate: true,
        bias: None,
        act: Activation::None,
    };
}

/// `C[m×n] (+)= A[m×k]·B` for a packed `B`, `A` row-major (stride `lda`) and
/// `C` row-major (stride `ldc`), with the epilogue `epi`.
///
/// Walks panels outermost so that each `k × NR` panel stays in cache while the
/// row tiles of A pass over it. Edge tiles go through zero-padded scratch tiles.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm(
    kern: &Kernel,
    m: usize,
    a: &[f32],
    lda: usize,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    epi: Epilogue,
) {
    gemm_a(kern, m, a, AStrides { row: lda, k: 1 }, b, c, ldc, epi)
}

/// How A's elements lie: `a[i, kk]` is at `i * row + kk * k`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AStrides {
    /// From one row of A to the next (`lda`; 1 for a transposed A).
    pub row: usize,
    /// From one column of A to the next (1; the stored row length for a
    /// transposed A).
    pub k: usize,
}

/// [`gemm`] with A laid out as `sa` says: a transposed A (stored `[k, m]`)
/// is read in place, with the same bits as its row-major copy.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_a(
    kern: &Kernel,
    m: usize,
    a: &[f32],
    sa: AStrides,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    epi: Epilogue,
) {
    let (n, k) = (b.n, b.k);
    if m == 0 || n == 0 {
        return;
    }
    assert_eq!(b.nr, kern.nr, "B packed for this kernel");
    let a_need = (m - 1) * sa.row + k.saturating_sub(1) * sa.k + usize::from(k > 0);
    assert!(a.len() >= a_need && c.len() >= (m - 1) * ldc + n);
    if let Some(bias) = epi.bias {
        assert!(bias.len() >= b.panels() * kern.nr);
    }
    match b.packing {
        Packing::F32 => tiles(kern.f, m, a, sa, b, c, ldc, epi),
        Packing::Rounded => with_a_scratch(m * k, |ar| {
            a_rows(ar, k, |i, kk| bf16::round(a[i * sa.row + kk * sa.k]));
            tiles(kern.f, m, ar, AStrides { row: k, k: 1 }, b, c, ldc, epi);
        }),
        Packing::Pairs | Packing::Tiles => {
            let k2 = k.div_ceil(2);
            let row_fns = match b.packing {
                Packing::Tiles => crate::amx::kernels(kern.nr)
                    .expect("panels are packed as tiles only where AMX is on"),
                _ => bf16_kernels(kern),
            };
            // A read transposed (`xᵀ` of a weight gradient): pair rows along
            // m, one vector pass per pair of A's stored rows, multiplied in
            // that `[k2, m]` layout as the f32 kernels read a transposed A.
            if sa.row == 1 && sa.k >= m && m > 1 {
                if b.packing == Packing::Tiles {
                    // AMX tiles load A in rows: transpose into pair rows.
                    return with_a_scratch(m * k2, |ap| {
                        a_pair_rows_transposed(ap, a, m, k, sa.k);
                        tiles(row_fns, m, ap, AStrides { row: k2, k: 1 }, b, c, ldc, epi);
                    });
                }
                return with_a_scratch(m * k2, |ap| {
                    for (p, out) in ap.chunks_exact_mut(m).enumerate() {
                        prefetch_rows(a, 2 * (p + PAIR_AHEAD), k, sa.k, m);
                        let lo = &a[2 * p * sa.k..][..m];
                        let hi = (2 * p + 1 < k).then(|| &a[(2 * p + 1) * sa.k..][..m]);
                        bf16::pair_rows_into(lo, hi, out);
                    }
                    let sp = AStrides { row: 1, k: m };
                    tiles(row_fns, m, ap, sp, b, c, ldc, epi);
                });
            }
            with_a_scratch(m * k2, |ap| {
                match sa.k {
                    1 => a_pair_rows(ap, k, &a[..(m - 1) * sa.row + k], sa.row),
                    _ => a_rows(ap, k2, |i, p| {
                        let lo = a[i * sa.row + 2 * p * sa.k];
                        let hi = if 2 * p + 1 < k {
                            a[i * sa.row + (2 * p + 1) * sa.k]
                        } else {
                            0.0
                        };
                        f32::from_bits(bf16::pair(lo, hi))
                    }),
                }
                tiles(row_fns, m, ap, AStrides { row: k2, k: 1 }, b, c, ldc, epi);
            })
        }
    }
}

thread_local! {
    /// [`gemm_a`]'s bf16 copy of A, grown and kept per thread.
    static A_BF16: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on `n` values of this thread's A scratch. A fresh buffer per
/// call came from the top of the thread's malloc arena, which glibc trims
/// after each free, so every call faulted its pages in again: on the paper
/// model at 8K about 440K page faults (1.7 GB) per forward, and 4% of the
/// cycles in the kernel's fault and page-clearing paths.
fn with_a_scratch<R>(n: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    A_BF16.with(|cell| match cell.try_borrow_mut() {
        Ok(mut v) => {
            if v.len() < n {
                v.resize(n, 0.0);
            }
            f(&mut v[..n])
        }
        // Not reached (no GEMM runs inside another's conversion), but a
        // private buffer keeps a re-entered call correct.
        Err(_) => f(&mut vec![0.0; n]),
    })
}

/// Fills `out` (rows of `k`) with A computed element by element (the bf16
/// conversions of [`gemm_a`]; a block of rows, so it stays in cache).
fn a_rows(out: &mut [f32], k: usize, at: impl Fn(usize, usize) -> f32) {
    for (i, row) in out.chunks_exact_mut(k.max(1)).enumerate() {
        for (kk, o) in row.iter_mut().enumerate() {
            *o = at(i, kk);
        }
    }
}

/// Row-major A (rows of `k`, `lda` apart) as bf16 pairs into `out` (rows of
/// `ceil(k/2)` words): a pair word is two consecutive bf16 values, the first
/// in the low half, which is the little-endian layout of the row's bf16
/// values in order; so each row converts straight into its words (an odd `k`
/// ends in a zero half).
fn a_pair_rows(out: &mut [f32], k: usize, a: &[f32], lda: usize) {
    let k2 = k.div_ceil(2);
    for (i, row) in out.chunks_exact_mut(k2.max(1)).enumerate() {
        // SAFETY: the row's `k2` f32 words are `2 k2` u16 halves of the same
        // memory (u16 needs less alignment, no bit pattern is invalid in
        // either), borrowed only while `row` is; pairs exist only on x86_64
        // (AVX-512 BF16), which is little-endian, so half 2p is the low one.
        let halves =
            unsafe { std::slice::from_raw_parts_mut(row.as_mut_ptr().cast::<u16>(), 2 * k2) };
        bf16::to_bits_row(&a[i * lda..i * lda + k], &mut halves[..k]);
        if k % 2 == 1 {
            halves[k] = 0;
        }
    }
}

/// Pair rows of a transposed A (stored `[k, m]`, rows `ld` apart) into
/// `out` (`m` rows of `ceil(k/2)` words, row-major, as [`a_pair_rows`]
/// writes them): blocks of 16 pair rows converted by
/// [`bf16::pair_rows_into`] into a small `[16, m]` block, then written 16
/// words (one cache line) per row of `out`.
fn a_pair_rows_transposed(out: &mut [f32], a: &[f32], m: usize, k: usize, ld: usize) {
    const P: usize = 16;
    let k2 = k.div_ceil(2);
    let mut block = vec![0.0f32; P * m];
    for p0 in (0..k2).step_by(P) {
        let np = P.min(k2 - p0);
        for (q, words) in block.chunks_exact_mut(m).take(np).enumerate() {
            let p = p0 + q;
            prefetch_rows(a, 2 * (p + PAIR_AHEAD), k, ld, m);
            let lo = &a[2 * p * ld..][..m];
            let hi = (2 * p + 1 < k).then(|| &a[(2 * p + 1) * ld..][..m]);
            bf16::pair_rows_into(lo, hi, words);
        }
        for (i, row) in out.chunks_exact_mut(k2).enumerate() {
            for (q, w) in row[p0..p0 + np].iter_mut().enumerate() {
                *w = block[q * m + i];
            }
        }
    }
}

/// Pairs of rows the bf16 conversions prefetch ahead of the pair they
/// convert: their rows are short (a panel's 64 columns, a weight gradient's
/// 256 inputs) and `ld` apart, too short a run for the hardware prefetcher
/// to follow before the next row starts.
const PAIR_AHEAD: usize = 8;

/// Prefetches rows `r` and `r + 1` (of `rows`, `ld` apart, `len` values
/// each) of `x`, where they exist.
#[inline(always)]
fn prefetch_rows(x: &[f32], r: usize, rows: usize, ld: usize, len: usize) {
    for row in r..(r + 2).min(rows) {
        crate::simd::prefetch(&x[row * ld..][..len]);
    }
}

/// The AVX-512 BF16 micro-kernels with the same tile as `kern` (the panels
/// were packed for its `NR`).
fn bf16_kernels(kern: &Kernel) -> &'static [MicroFn] {
    #[cfg(target_arch = "x86_64")]
    {
        use x86::avx512bf16 as k;
        match (kern.mr, kern.nr) {
            (6, 64) => {
                return &[
                    k::<1, 4>, k::<2, 4>, k::<3, 4>, k::<4, 4>, k::<5, 4>, k::<6, 4>,
                ]
            }
            (12, 32) => {
                return &[
                    k::<1, 2>, k::<2, 2>, k::<3, 2>, k::<4, 2>, k::<5, 2>, k::<6, 2>, k::<7, 2>,
                    k::<8, 2>, k::<9, 2>, k::<10, 2>, k::<11, 2>, k::<12, 2>,
                ]
            }
            _ => {}
        }
    }
    unreachable!("bf16 pairs are packed only for the AVX-512 kernels ({kern:?})")
}

/// Rows of B per pass over its panels (stored rows: pairs for bf16). A
/// pass's slice of a 64-column panel is 128 KiB, so it stays in L2 while every
/// row tile of A passes over it. Without the split a `k = 4096` panel is
/// 1 MiB, and a weight gradient's (`k` = the sequence length) 4 MiB at 16K,
/// streamed from memory once per row tile. On the Zen 5 VM 256 was 2-4%
/// slower on the paper model at 8K and 1024 no faster than 512.
const KC: usize = 512;

/// [`KC`] for AMX tiles (pairs of rows): a pass's end stores C's tiles and
/// the next pass loads them again, which costs the tiles more than a
/// panel slice beyond L2 does. On the Sapphire Rapids-class Xeon the paper
/// model's feed-forward stack ran at 850 GFLOP/s with 512 pairs, 870-920 with
/// 1024 and 600 with 128.
const KC_TILES: usize = 1024;

/// The register-tile loop of [`gemm_a`]: `fns[r - 1]` computes a tile of
/// `r` rows; A's values (f32, or bf16 pairs) lie as `sa` says and B's panels
/// hold `b.stored_k()` rows.
///
/// The k dimension runs in passes of [`KC`] rows; every pass after the first
/// accumulates onto C, and the bias and activation come with the last. The
/// micro-kernels add the products in k order onto a register tile loaded
/// from C, so a split sum rounds exactly as the unsplit one.
#[allow(clippy::too_many_arguments)]
fn tiles(
    fns: &[MicroFn],
    m: usize,
    a: &[f32],
    sa: AStrides,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    epi: Epilogue,
) {
    let k = b.stored_k();
    let problem = Problem {
        fns,
        m,
        a,
        sa,
        b,
        ldc,
        epi,
    };
    // One pass even for k = 0, which writes the bias (or zeros).
    let kc = match b.packing {
        Packing::Tiles => KC_TILES,
        _ => KC,
    };
    for k0 in (0..k.max(1)).step_by(kc) {
        let pass = Pass {
            k0,
            kc: kc.min(k - k0.min(k)),
            accumulate: epi.accumulate || k0 > 0,
            last: k0 + kc >= k,
        };
        tiles_pass(&problem, c, pass);
    }
}

/// The operands of one [`tiles`] call but C.
struct Problem<'a> {
    fns: &'a [MicroFn],
    m: usize,
    a: &'a [f32],
    sa: AStrides,
    b: &'a PackedB,
    ldc: usize,
    epi: Epilogue<'a>,
}

/// Which rows of B one pass of [`tiles`] multiplies, and how it writes C.
#[derive(Clone, Copy)]
struct Pass {
    k0: usize,
    kc: usize,
    accumulate: bool,
    last: bool,
}

/// One pass of [`tiles`]: `C (+)= A[:, k0..k0+kc] · B[k0..k0+kc, :]`, with
/// the epilogue's bias and activation when it is the last.
fn tiles_pass(p: &Problem, c: &mut [f32], pass: Pass) {
    let Problem {
        fns,
        m,
        a,
        sa,
        b,
        ldc,
        epi,
    } = *p;
    let (n, k, mr, nr) = (b.n, b.stored_k(), fns.len(), b.nr);
    let lda = sa.row;
    let relu = pass.last && epi.act == Activation::Relu;
    let act_after = pass.last && !matches!(epi.act, Activation::None | Activation::Relu);
    // Scratch C tile for column edges (rows edges use a kernel with fewer rows).
    let mut c_edge = [0.0f32; MAX_TILE];
    debug_assert!(mr * nr <= MAX_TILE);
    for panel in 0..b.panels() {
        let j0 = panel * nr;
        let cols = nr.min(n - j0);
        let step = b.packing.row_step(nr);
        let bp = &b.data[panel * k * nr + pass.k0 * step..(panel + 1) * k * nr];
        let bias = match epi.bias {
            Some(s) if pass.last => s[j0..].as_ptr(),
            _ => std::ptr::null(),
        };
        for i0 in (0..m).step_by(mr) {
            let rows = mr.min(m - i0);
            let direct = cols == nr;
            if !direct && pass.accumulate {
                for i in 0..rows {
                    c_edge[i * nr..i * nr + cols]
                        .copy_from_slice(&c[(i0 + i) * ldc + j0..][..cols]);
                }
            }
            let (cp, ldc_t) = if direct {
                (c[i0 * ldc + j0..].as_mut_ptr(), ldc)
            } else {
                (c_edge.as_mut_ptr(), nr)
            };
            let micro = Micro {
                k: pass.kc,
                a: a[i0 * lda + pass.k0 * sa.k..].as_ptr(),
                lda,
                a_ks: sa.k,
                b: bp.as_ptr(),
                b_group: k * bf16::TILE_COLS,
                c: cp,
                ldc: ldc_t,
                accumulate: pass.accumulate,
                bias,
                relu,
            };
            // SAFETY: the kernel was detected on this CPU; it touches `rows` rows of A
            // (kc values each, from column k0) and of C (NR values each, or the NR-wide
            // scratch), all within the slices per the caller's asserts; B and bias hold
            // whole panels, and the pass's rows lie within its panel.
            unsafe { (fns[rows - 1])(&micro) };
            if !direct {
                for i in 0..rows {
                    c[(i0 + i) * ldc + j0..][..cols]
                        .copy_from_slice(&c_edge[i * nr..i * nr + cols]);
                }
            }
            if act_after {
                for i in 0..rows {
                    epi.act.apply_slice(&mut c[(i0 + i) * ldc + j0..][..cols]);
                }
            }
        }
    }
}

/// `y[rows, out] = act(x[rows, in] · w[out, in]ᵀ + b[out])` (`rc_linear_f32`),
/// threaded over blocks of rows.
///
/// ```
/// use reformc_runtime::{linear, Activation};
/// let x = [1.0, 2.0, 3.0, 4.0]; // 2 rows, in = 2
/// let w = [1.0, 0.0, 1.0, -1.0, 0.5, 0.5]; // out = 3
/// let mut y = [0.0; 6];
/// linear(&x, 2, 2, &w, 3, Some(&[0.0, 0.0, 1.0]), Activation::Relu, &mut y).unwrap();
/// assert_eq!(y, [1.0, 0.0, 2.5, 3.0, 0.0, 4.5]);
/// ```
#[allow(clippy::too_many_arguments)]
pub fn linear(
    x: &[f32],
    rows: usize,
    inp: usize,
    w: &[f32],
    out: usize,
    b: Option<&[f32]>,
    act: Activation,
    y: &mut [f32],
) -> Result<()> {
    linear_with(kernel(), x, rows, inp, w, out, b, act, y)
}

/// [`linear`] with an explicit micro-kernel (one of [`available_kernels`]), for
/// benchmarks and cross-checks.
#[allow(clippy::too_many_arguments)]
pub fn linear_with(
    kern: &Kernel,
    x: &[f32],
    rows: usize,
    inp: usize,
    w: &[f32],
    out: usize,
    b: Option<&[f32]>,
    act: Activation,
    y: &mut [f32],
) -> Result<()> {
    check_len("x", x.len(), rows.checked_mul(inp))?;
    check_len("w", w.len(), out.checked_mul(inp))?;
    check_len("y", y.len(), rows.checked_mul(out))?;
    if let Some(b) = b {
        check_len("b", b.len(), Some(out))?;
    }
    strided_linear(kern, x, inp, rows, inp, w, out, b, act, y, out)
}

/// `y[rows × n] = x[rows × k]·B` with the epilogue, A laid out as `sa` says
/// (see [`gemm_a`]) and the rows of `y` `ldy` apart (`ldy >= n`), threaded
/// over blocks of rows: about 192 KiB of A per task (it stays in L2 while B's
/// panels pass), whole register tiles; any split gives the same bits (see the
/// module doc).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_rows_a(
    kern: &Kernel,
    rows: usize,
    x: &[f32],
    sa: AStrides,
    b: &PackedB,
    y: &mut [f32],
    ldy: usize,
    epi: Epilogue,
) -> Result<()> {
    let (k, n) = (b.k, b.n);
    if rows == 0 {
        return Ok(());
    }
    // Rows per task: what keeps a task's A rows in L2, but no more than an
    // even share of two tasks per thread, so that a short A (a weight
    // gradient's `xᵀ·dy` has as many rows as the layer is wide) still keeps
    // every thread busy. Whole micro-tiles either way: any split gives the
    // same bits.
    let cache_rows = (192 * 1024 / 4 / k.max(1)).max(1);
    let share = rows.div_ceil(2 * crate::pool::threads().max(1));
    let block = (cache_rows.min(share).div_ceil(kern.mr) * kern.mr).min(rows);
    let shared = SharedMut::new(y);
    par_for(rows.div_ceil(block), |t| {
        let r0 = t * block;
        let n_rows = block.min(rows - r0);
        // SAFETY: task t alone writes rows r0..r0+n_rows of y, which span
        // [r0 ldy, (r0+n_rows-1) ldy + n): no other task's rows.
        let yt = unsafe { shared.slice(r0 * ldy, (n_rows - 1) * ldy + n) };
        gemm_a(kern, n_rows, &x[r0 * sa.row..], sa, b, yt, ldy, epi);
    })
}

/// `y[r] = act(x[r] · wᵀ + b)` for `rows` rows of `x` (`ldx` apart) and of
/// `y` (`ldy` apart), `w` `[out, inp]` row-major, `b` `[out]` or none;
/// threaded over blocks of rows, the bias and activation applied as each
/// output tile is stored. reformc's MLIR pipeline calls it for a fused
/// `linear` (one marked contraction whose body adds the bias at the first k
/// and applies the activation at the last).
///
/// ```
/// use reformc_runtime::Activation;
/// // Two rows of 2 inputs, 3 apart; y's rows 2 apart.
/// let mut y = [0.0f32, -1.0, 0.0];
/// let w = [1.0, 1.0];
/// reformc_runtime::gemm::linear_strided(&[1.0, 2.0, 9.0, -3.0, -4.0], 3, 2, 2, &w, 1, Some(&[0.5]), Activation::Relu, &mut y, 2).unwrap();
/// assert_eq!(y, [3.5, -1.0, 0.0]);
/// ```
#[allow(clippy::too_many_arguments)]
pub fn linear_strided(
    x: &[f32],
    ldx: usize,
    rows: usize,
    inp: usize,
    w: &[f32],
    out: usize,
    b: Option<&[f32]>,
    act: Activation,
    y: &mut [f32],
    ldy: usize,
) -> Result<()> {
    strided_linear(kernel(), x, ldx, rows, inp, w, out, b, act, y, ldy)
}

/// [`linear_strided`] with an explicit micro-kernel (what [`linear_with`]
/// runs on contiguous rows).
#[allow(clippy::too_many_arguments)]
fn strided_linear(
    kern: &Kernel,
    x: &[f32],
    ldx: usize,
    rows: usize,
    inp: usize,
    w: &[f32],
    out: usize,
    b: Option<&[f32]>,
    act: Activation,
    y: &mut [f32],
    ldy: usize,
) -> Result<()> {
    check_len("w", w.len(), out.checked_mul(inp))?;
    if let Some(b) = b {
        check_len("b", b.len(), Some(out))?;
    }
    let extent = |ld: usize, cols: usize| match rows {
        0 => Some(0),
        _ => (rows - 1).checked_mul(ld)?.checked_add(cols),
    };
    if ldx < inp || ldy < out {
        return Err(crate::error::invalid(format!(
            "row strides {ldx} and {ldy} are below the row lengths {inp} and {out}"
        )));
    }
    if extent(ldx, inp).is_none_or(|e| e > x.len()) || extent(ldy, out).is_none_or(|e| e > y.len())
    {
        return Err(crate::error::invalid(format!(
            "x has {} and y {} elements, too few for {rows} rows {ldx} and {ldy} apart",
            x.len(),
            y.len()
        )));
    }
    if rows == 0 || out == 0 {
        return Ok(());
    }
    if inp == 0 {
        // Empty sum: y = act(b) (or act(0)).
        for r in 0..rows {
            for (j, v) in y[r * ldy..r * ldy + out].iter_mut().enumerate() {
                *v = act.apply(b.map_or(0.0, |b| 0.0 + b[j]));
            }
        }
        return Ok(());
    }
    let packed = crate::prepack::from_nt(w, out, inp, inp, kern.nr)?;
    let bias = match b {
        Some(b) => {
            let mut v = try_zeroed(packed.panels() * kern.nr, "bias")?;
            v[..out].copy_from_slice(b);
            Some(v)
        }
        None => None,
    };
    let epi = Epilogue {
        accumulate: false,
        bias: bias.as_deref(),
        act,
    };
    let sa = AStrides { row: ldx, k: 1 };
    gemm_rows_a(kern, rows, x, sa, &packed, y, ldy, epi)
}

/// Checks a slice length against a size product (None = overflow).
pub(crate) fn check_len(name: &str, len: usize, want: Option<usize>) -> Result<()> {
    match want {
        Some(w) if w == len => Ok(()),
        Some(w) => Err(invalid(format!("{name} has {len} elements, expected {w}"))),
        None => Err(invalid(format!("size of {name} overflows"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, n: usize, k: usize, a: &[f32], w: &[f32]) -> Vec<f64> {
        let mut y = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                y[i * n + j] = (0..k)
                    .map(|t| f64::from(a[i * k + t]) * f64::from(w[j * k + t]))
                    .sum();
            }
        }
        y
    }

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (i as f32 * 0.618 + seed as f32 * 1.3).sin() * 2.0)
            .collect()
    }

    #[test]
    fn every_kernel_matches_naive_on_edge_shapes() {
        for kern in available_kernels() {
            for (m, n, k) in [
                (1, 1, 1),
                (7, 13, 5),
                (13, 70, 33),
                (6, 64, 64),
                (29, 129, 17),
            ] {
                let (a, w) = (data(m * k, 1), data(n * k, 2));
                let b = PackedB::from_nt(&w, n, k, k, kern.nr).unwrap();
                let mut c = vec![f32::NAN; m * n];
                gemm(&kern, m, &a, k, &b, &mut c, n, Epilogue::STORE);
                let want = naive(m, n, k, &a, &w);
                for (x, y) in c.iter().zip(&want) {
                    assert!((f64::from(*x) - y).abs() < 1e-4, "{kern:?} {m}x{n}x{k}");
                }
                // Accumulating a second product doubles the result.
                gemm(&kern, m, &a, k, &b, &mut c, n, Epilogue::ACCUMULATE);
                for (x, y) in c.iter().zip(&want) {
                    assert!((f64::from(*x) - 2.0 * y).abs() < 2e-4, "{kern:?} acc");
                }
            }
        }
    }

    /// The vector bf16 conversions (pair rows of a `[k, n]` B, of a
    /// transposed A) against the element-wise ones they replace.
    #[test]
    fn bf16_pair_packings_match_the_element_wise_ones() {
        let kern = kernel();
        if !(bf16::hardware() && kern.isa == "avx512") {
            eprintln!("skipped: bf16 pairs need AVX-512 BF16 ({kern:?})");
            return;
        }
        let (m, n, k) = (2 * kern.mr + 3, kern.nr + 7, 37);
        let b = data(k * (n + 2), 5);
        let words = |p: &PackedB| p.data.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        bf16::with(true, || {
            let at = |kk: usize, j: usize| b[kk * (n + 2) + j];
            for packing in [Packing::Pairs, Packing::Tiles] {
                let fast = PackedB::pairs_from_kn(&b, k, n, n + 2, kern.nr, packing).unwrap();
                let slow = PackedB::from_fn(k, n, kern.nr, packing, at).unwrap();
                assert_eq!(words(&fast), words(&slow), "{packing:?}");
            }
            // What this CPU packs: tiles where AMX is on, else pairs.
            let fast = PackedB::from_kn(&b, k, n, n + 2, kern.nr).unwrap();
            let want = match crate::amx::mode().0 {
                crate::amx::Mode::Off => Packing::Pairs,
                _ => Packing::Tiles,
            };
            assert_eq!(fast.packing, want);
            // A stored transposed (`[k, m]`, rows m + 1 apart) and as a
            // row-major copy multiply to the same bits.
            let at_t = data(k * (m + 1), 6);
            let a: Vec<f32> = (0..m * k)
                .map(|i| at_t[(i % k) * (m + 1) + i / k])
                .collect();
            let (mut y_t, mut y) = (vec![0.0; m * n], vec![0.0; m * n]);
            let st = AStrides { row: 1, k: m + 1 };
            gemm_a(kern, m, &at_t, st, &fast, &mut y_t, n, Epilogue::STORE);
            gemm_a(
                kern,
                m,
                &a,
                AStrides { row: k, k: 1 },
                &fast,
                &mut y,
                n,
                Epilogue::STORE,
            );
            assert_eq!(y_t.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), {
                y.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            });
        });
    }

    /// The GEMM driver around the AMX micro-kernels (on the tile model, so
    /// on any CPU): row tiles of 16 and fewer, edge panels through the
    /// scratch tile, k in passes of KC_TILES pairs with an odd remainder, onto C
    /// and not, bias and relu; each element within 1e-5 of the f64 sum of
    /// the same bf16 products.
    #[test]
    fn amx_tiles_multiply_through_the_driver() {
        for nr in [64usize, 32] {
            let fns = crate::amx::model_kernels(nr);
            for (m, n, k, acc, act) in [
                (37, 2 * nr + 5, 2 * KC_TILES + 35, true, Activation::Relu),
                (16, nr, 64, false, Activation::None),
                (5, nr - 3, 33, false, Activation::Relu),
                (1, 7, 1, true, Activation::None),
            ] {
                let (a, bm) = (data(m * k, 11), data(k * n, 12));
                let b = PackedB::from_fn(k, n, nr, Packing::Tiles, |kk, j| bm[kk * n + j]).unwrap();
                let mut bias = data(b.panels() * nr, 13);
                bias[n..].iter_mut().for_each(|x| *x = f32::NAN);
                let k2 = k.div_ceil(2);
                let mut ap = vec![0.0f32; m * k2];
                a_pair_rows(&mut ap, k, &a, k);
                let c0 = data(m * (n + 2), 14);
                let mut c = c0.clone();
                let epi = Epilogue {
                    accumulate: acc,
                    bias: Some(&bias),
                    act,
                };
                tiles(
                    fns,
                    m,
                    &ap,
                    AStrides { row: k2, k: 1 },
                    &b,
                    &mut c,
                    n + 2,
                    epi,
                );
                let r = |x: f32| f64::from(bf16::round(x));
                for i in 0..m {
                    for j in 0..n + 2 {
                        let got = f64::from(c[i * (n + 2) + j]);
                        if j >= n {
                            assert_eq!(got, f64::from(c0[i * (n + 2) + j]), "past n");
                            continue;
                        }
                        let terms: Vec<f64> =
                            (0..k).map(|t| r(a[i * k + t]) * r(bm[t * n + j])).collect();
                        let base = if acc {
                            f64::from(c0[i * (n + 2) + j])
                        } else {
                            0.0
                        };
                        let mut want = base + terms.iter().sum::<f64>() + f64::from(bias[j]);
                        let mag = base.abs()
                            + terms.iter().map(|t| t.abs()).sum::<f64>()
                            + f64::from(bias[j]).abs();
                        if act == Activation::Relu {
                            want = want.max(0.0);
                        }
                        assert!(
                            (got - want).abs() <= 1e-5 * mag,
                            "nr {nr}, {m}x{n}x{k}, C[{i}][{j}] = {got}, expected {want}"
                        );
                    }
                }
            }
        }
    }

    /// A transposed A turned into pair rows for the AMX tiles: the words of
    /// the element-wise conversion, for odd `k`, `m` not a multiple of 16
    /// and more than one block of 16 pair rows.
    #[test]
    fn transposed_a_becomes_the_pair_rows_of_its_copy() {
        for (m, k) in [(37usize, 75usize), (16, 32), (2, 1)] {
            let ld = m + 3;
            let at = data(k * ld, 15);
            let k2 = k.div_ceil(2);
            let mut got = vec![0.0f32; m * k2];
            a_pair_rows_transposed(&mut got, &at, m, k, ld);
            for i in 0..m {
                for p in 0..k2 {
                    let lo = at[2 * p * ld + i];
                    let hi = if 2 * p + 1 < k {
                        at[(2 * p + 1) * ld + i]
                    } else {
                        0.0
                    };
                    assert_eq!(
                        got[i * k2 + p].to_bits(),
                        bf16::pair(lo, hi),
                        "{m}x{k} [{i}][{p}]"
                    );
                }
            }
        }
    }

    #[test]
    fn blocking_does_not_change_bits() {
        // The same element through a direct tile and through an edge tile.
        let kern = kernel();
        let (m, n, k) = (3 * kern.mr + 1, kern.nr + 3, 37);
        let (a, w) = (data(m * k, 3), data(n * k, 4));
        let b = PackedB::from_nt(&w, n, k, k, kern.nr).unwrap();
        let mut whole = vec![0.0; m * n];
        gemm(kern, m, &a, k, &b, &mut whole, n, Epilogue::STORE);
        for start in [1, 2, kern.mr - 1] {
            let mut part = vec![0.0; (m - start) * n];
            gemm(
                kern,
                m - start,
                &a[start * k..],
                k,
                &b,
                &mut part,
                n,
                Epilogue::STORE,
            );
            assert_eq!(part[..], whole[start * n..]);
        }
    }

    #[test]
    fn k_passes_round_as_one_sum() {
        // k spans three passes of KC rows; C starts non-zero and the edge
        // columns go through the scratch tile. Each kernel must give the bits
        // of one f32 sum in k order (FMA kernels fused, the scalar one not),
        // then the bias and relu.
        for kern in available_kernels() {
            let (m, n, k) = (kern.mr + 2, kern.nr + 5, 2 * KC + 37);
            let (a, w, bias) = (data(m * k, 8), data(n * k, 9), data(n, 10));
            let b = PackedB::from_nt(&w, n, k, k, kern.nr).unwrap();
            let mut padded = vec![0.0; b.panels() * kern.nr];
            padded[..n].copy_from_slice(&bias);
            let c0 = data(m * n, 11);
            let mut c = c0.clone();
            let epi = Epilogue {
                accumulate: true,
                bias: Some(&padded),
                act: Activation::Relu,
            };
            gemm(&kern, m, &a, k, &b, &mut c, n, epi);
            for i in 0..m {
                for j in 0..n {
                    let mut acc = c0[i * n + j];
                    for t in 0..k {
                        let (x, y) = (a[i * k + t], w[j * k + t]);
                        acc = match kern.isa {
                            "scalar" => acc + x * y,
                            _ => x.mul_add(y, acc),
                        };
                    }
                    let want = (acc + bias[j]).max(0.0);
                    assert_eq!(c[i * n + j], want, "{kern:?} ({i}, {j})");
                }
            }
        }
    }

    #[test]
    fn linear_bias_and_activations() {
        let (rows, inp, out) = (37, 19, 21);
        let (x, w, b) = (data(rows * inp, 5), data(out * inp, 6), data(out, 7));
        let want = naive(rows, out, inp, &x, &w);
        for act in Activation::ALL {
            let mut y = vec![0.0; rows * out];
            linear(&x, rows, inp, &w, out, Some(&b), act, &mut y).unwrap();
            for (i, v) in y.iter().enumerate() {
                let pre = (want[i] + f64::from(b[i % out])) as f32;
                let expect = act.apply(pre);
                assert!((v - expect).abs() < 1e-4, "{act:?}: {v} vs {expect}");
            }
        }
    }

    #[test]
    fn wrong_lengths_are_rejected() {
        let mut y = [0.0; 4];
        let e = linear(
            &[1.0; 3],
            2,
            2,
            &[1.0; 4],
            2,
            None,
            Activation::None,
            &mut y,
        );
        assert_eq!(e.unwrap_err().code(), 1);
    }
}
