//! Intel AMX tiles for bf16 products (`tdpbf16ps`), with a model of the
//! tile unit that runs anywhere.
//!
//! Under `--precision bf16` every product can run on AMX, its left operand
//! converted to bf16 pair rows ([`crate::gemm`]; a transposed one, a weight
//! gradient's `xᵀ`, in blocks of 16 pair rows): on a
//! CPU with AMX-TILE and AMX-BF16 whose kernel grants the process the tile
//! state (Linux `arch_prctl(ARCH_REQ_XCOMP_PERM)`), a micro-kernel of 16
//! rows by one packed panel (`NR` = 32 or 64 columns: two or four 16×16 f32
//! accumulator tiles) multiplies 32 bf16 values along `k` per instruction.
//! The right-hand side holds the AVX-512 BF16 kernels' pair words (AMX's
//! "VNNI" layout of B) in tile order ([`crate::bf16::Packing::Tiles`]): a
//! B tile of 16 pair rows by 16 columns is 1 KiB of contiguous memory.
//!
//! The micro-kernel is written once over [`TileUnit`], the instructions it
//! uses, with two implementations: [`Hw`], the instructions themselves, and
//! [`Model`], the Intel SDM's description of them in Rust. Tests run the
//! micro-kernel, the GEMM driver around it and whole models on the model
//! (`REFORMC_RT_BF16=amx-model`) on any CPU with AVX-512 BF16, so that
//! everything but the instructions themselves is checked without AMX. On
//! AMX hardware a self-test compares the instructions' results with an f64
//! sum of the same bf16 products once per process before first use, and
//! a mismatch falls back to AVX-512 BF16 with one line on stderr: an error
//! in this file can cost speed, never a silently wrong result.
//!
//! `REFORMC_RT_BF16` selects: unset or `amx`, AMX where available;
//! `avx512bf16` (or `emulate`), never AMX; `amx-model`, the model (slow:
//! for tests).
//!
//! ```
//! use reformc_runtime::amx;
//! // On this CPU: AMX on the hardware, on the model, or off (and why).
//! let (mode, why) = amx::mode();
//! assert!(mode != amx::Mode::Hardware || why.is_none());
//! ```

use crate::gemm::{Micro, MicroFn};
use std::sync::OnceLock;

/// Which tile unit the bf16 row-major products use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// AMX instructions.
    Hardware,
    /// The Rust model of the tile unit (`REFORMC_RT_BF16=amx-model`).
    Model,
    /// No tiles: AVX-512 BF16 (or the emulation) as before.
    Off,
}

/// What the CPU and the operating system offer for AMX.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Support {
    /// CPUID.(7,0):EDX[24] AMX-TILE.
    pub tile: bool,
    /// CPUID.(7,0):EDX[22] AMX-BF16.
    pub bf16: bool,
    /// XCR0 bits 17 and 18 (tile configuration and data enabled by the OS).
    pub os: bool,
    /// Palette 1's rows per tile (CPUID leaf 0x1D).
    pub max_rows: usize,
    /// Palette 1's bytes per tile row.
    pub bytes_per_row: usize,
}

impl Support {
    /// Whether the micro-kernel's 16 rows of 64 bytes fit palette 1.
    fn complete(&self) -> bool {
        self.tile && self.bf16 && self.os && self.max_rows >= 16 && self.bytes_per_row >= 64
    }
}

/// The mode for `support` and the `REFORMC_RT_BF16` value `env`, and the
/// line to print about it, if any. `grant` asks the OS for the tile state
/// (called only when the CPU has AMX and AMX is wanted). Hardware still
/// has to pass [`self_test`].
///
/// ```
/// use reformc_runtime::amx::{decide, Mode, Support};
/// let none = Support::default();
/// assert_eq!(decide(none, None, || true).0, Mode::Off);
/// assert_eq!(decide(none, Some("amx-model"), || true).0, Mode::Model);
/// assert!(decide(none, Some("amx"), || true).1.unwrap().contains("no AMX"));
/// ```
pub fn decide(
    support: Support,
    env: Option<&str>,
    grant: impl FnOnce() -> bool,
) -> (Mode, Option<String>) {
    match env {
        Some("amx-model") => {
            return (
                Mode::Model,
                Some(
                    "reformc runtime: bf16 products on the AMX tile model \
                     (REFORMC_RT_BF16=amx-model; slow, for tests)"
                        .into(),
                ),
            )
        }
        Some("avx512bf16" | "emulate") => return (Mode::Off, None),
        None | Some("amx") => {}
        Some(other) => {
            let (m, why) = decide(support, None, grant);
            let unknown = format!(
                "reformc runtime: REFORMC_RT_BF16=`{other}` is none of amx, avx512bf16, \
                 emulate, amx-model; using the default"
            );
            return (
                m,
                Some(why.map_or(unknown.clone(), |w| format!("{unknown}; {w}"))),
            );
        }
    }
    let asked = env == Some("amx");
    if !support.complete() {
        let why = format!(
            "REFORMC_RT_BF16=amx: this CPU has no AMX ({support:?}); \
             bf16 products use AVX-512 BF16"
        );
        return (Mode::Off, asked.then_some(why));
    }
    if !grant() {
        return (
            Mode::Off,
            Some(
                "reformc runtime: the kernel did not grant the AMX tile state \
                 (arch_prctl ARCH_REQ_XCOMP_PERM); bf16 products use AVX-512 BF16"
                    .into(),
            ),
        );
    }
    (Mode::Hardware, None)
}

/// The decision of [`mode`] (and the line printed about it).
static MODE: OnceLock<(Mode, Option<String>)> = OnceLock::new();

/// The mode, if a bf16 product with row-major A has asked for it yet
/// (without deciding it: no permission request, no self-test).
pub fn decided() -> Option<Mode> {
    MODE.get().map(|m| m.0)
}

/// This process's mode, decided once (and self-tested on hardware), and the
/// line printed on stderr when it was decided, if any.
pub fn mode() -> (Mode, Option<&'static str>) {
    let (m, why) = MODE.get_or_init(|| {
        let env = std::env::var("REFORMC_RT_BF16").ok();
        let (mut m, mut why) = decide(detect(), env.as_deref(), request_tiles);
        if m == Mode::Hardware {
            if let Err(e) = self_test(&HW4, &HW2) {
                (m, why) = (
                    Mode::Off,
                    Some(format!(
                        "reformc runtime: AMX self-test failed ({e}); \
                         bf16 products use AVX-512 BF16"
                    )),
                );
            }
        }
        if let Some(line) = &why {
            eprintln!("{line}");
        }
        (m, why)
    });
    (*m, why.as_deref())
}

/// The micro-kernels for row-major bf16 pair rows and panels `nr` wide
/// packed as [`crate::bf16::Packing::Tiles`], or `None` where the mode is
/// off or the width is not 32 or 64. Entry `r - 1` computes `r` rows
/// (1..=[`MR`]).
pub(crate) fn kernels(nr: usize) -> Option<&'static [MicroFn]> {
    match (mode().0, nr) {
        (Mode::Hardware, 64) => Some(&HW4),
        (Mode::Hardware, 32) => Some(&HW2),
        (Mode::Model, 64) => Some(&MODEL4),
        (Mode::Model, 32) => Some(&MODEL2),
        _ => None,
    }
}

macro_rules! table {
    ($name:ident, $f:ident, $nt:literal) => {
        static $name: [MicroFn; MR] = [
            $f::<1, $nt>,
            $f::<2, $nt>,
            $f::<3, $nt>,
            $f::<4, $nt>,
            $f::<5, $nt>,
            $f::<6, $nt>,
            $f::<7, $nt>,
            $f::<8, $nt>,
            $f::<9, $nt>,
            $f::<10, $nt>,
            $f::<11, $nt>,
            $f::<12, $nt>,
            $f::<13, $nt>,
            $f::<14, $nt>,
            $f::<15, $nt>,
            $f::<16, $nt>,
            $f::<17, $nt>,
            $f::<18, $nt>,
            $f::<19, $nt>,
            $f::<20, $nt>,
            $f::<21, $nt>,
            $f::<22, $nt>,
            $f::<23, $nt>,
            $f::<24, $nt>,
            $f::<25, $nt>,
            $f::<26, $nt>,
            $f::<27, $nt>,
            $f::<28, $nt>,
            $f::<29, $nt>,
            $f::<30, $nt>,
            $f::<31, $nt>,
            $f::<32, $nt>,
        ];
    };
}
table!(HW4, hardware_kernel, 4);
table!(HW2, hardware_kernel, 2);
table!(MODEL4, model_kernel, 4);
table!(MODEL2, model_kernel, 2);

/// [`micro`] on the AMX instructions.
///
/// # Safety
/// [`mode`] is [`Mode::Hardware`] (the CPU has AMX and the process holds the
/// tile state), and `p` is as [`micro`] requires.
unsafe fn hardware_kernel<const R: usize, const NT: usize>(p: &Micro) {
    // SAFETY: the caller's contract.
    unsafe { micro::<Hw, R, NT>(&mut Hw, p) }
}

/// [`micro`] on the model.
///
/// # Safety
/// `p` is as [`micro`] requires.
unsafe fn model_kernel<const R: usize, const NT: usize>(p: &Micro) {
    // SAFETY: the caller's contract; the model touches only `p`'s memory.
    unsafe { micro::<Model, R, NT>(&mut Model::new(), p) }
}

/// The tile configuration (`ldtilecfg`'s 64-byte operand, palette 1).
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    /// Bytes per row of each tile.
    colsb: [u16; 16],
    /// Rows of each tile.
    rows: [u8; 16],
}

/// Tile numbers of [`micro`]'s 16-row form: accumulators `0..NT`, A in 4, B
/// in 5-7.
const A_TILE: usize = 4;

/// Rows of the micro-kernels' register tile: two 16-row A tiles.
pub(crate) const MR: usize = 32;

impl TileConfig {
    /// The micro-kernel's tiles for `r` rows and `nt` column tiles: `nt`
    /// accumulators of `r`×16 f32, A of `r` rows × 16 pair words, three B
    /// tiles of 16 pair rows × 16 columns.
    fn micro(r: usize, nt: usize) -> TileConfig {
        assert!((1..=16).contains(&r) && (1..=4).contains(&nt));
        let mut c = TileConfig {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            colsb: [0; 16],
            rows: [0; 16],
        };
        for t in (0..nt).chain([A_TILE]) {
            (c.rows[t], c.colsb[t]) = (r as u8, 64);
        }
        for t in 5..8 {
            (c.rows[t], c.colsb[t]) = (16, 64);
        }
        c
    }

    /// [`micro`]'s tiles for `16 + r2` rows (`r2` in 1..=16), 2×2: the
    /// accumulators of rows 0-15 in 0 and 1 and of the other `r2` rows in 2
    /// and 3 (16 columns each), A's two row tiles in 4 and 5, two B tiles
    /// of 16 pair rows × 16 columns in 6 and 7.
    fn micro_2x2(r2: usize) -> TileConfig {
        assert!((1..=16).contains(&r2));
        let mut c = TileConfig::micro(16, 4);
        for (t, rows) in [
            (0, 16),
            (1, 16),
            (2, r2),
            (3, r2),
            (4, 16),
            (5, r2),
            (6, 16),
            (7, 16),
        ] {
            (c.rows[t], c.colsb[t]) = (rows as u8, 64);
        }
        c
    }
}

/// The tile instructions the micro-kernel uses (`T`, `C`, `A`, `B`: tile
/// numbers 0-7).
///
/// # Safety
/// Every method requires a configuration loaded with [`TileUnit::configure`]
/// that defines the tiles it names (and for `dp`, shapes that agree:
/// `C` rows = `A` rows, `C` and `B` bytes per row equal, `A` bytes per row =
/// 4 × `B` rows), and for loads and stores, `rows` rows of `colsb` bytes
/// at `base + r·stride`.
pub(crate) trait TileUnit {
    /// `ldtilecfg`: sets the configuration and zeroes every tile.
    unsafe fn configure(&mut self, cfg: &TileConfig);
    /// `tilezero`.
    unsafe fn zero<const T: usize>(&mut self);
    /// `tileloadd`: row `r` from `base + r·stride`.
    unsafe fn load<const T: usize>(&mut self, base: *const u8, stride: usize);
    /// `tilestored`: row `r` to `base + r·stride`.
    unsafe fn store<const T: usize>(&mut self, base: *mut u8, stride: usize);
    /// `tdpbf16ps C, A, B`: `C[m][n] += Σ_k A[m].pair[k] · B[k].pair[n]`.
    unsafe fn dp<const C: usize, const A: usize, const B: usize>(&mut self);
}

/// The AMX instructions.
pub(crate) struct Hw;

#[cfg(target_arch = "x86_64")]
impl TileUnit for Hw {
    unsafe fn configure(&mut self, cfg: &TileConfig) {
        let p: *const TileConfig = cfg;
        // SAFETY: the process holds the tile state (callers' contract) and
        // `cfg` is a 64-byte palette-1 configuration within the limits
        // checked by `Support::complete` (16 rows of 64 bytes).
        unsafe { std::arch::asm!("ldtilecfg [{}]", in(reg) p, options(nostack, readonly)) }
    }
    unsafe fn zero<const T: usize>(&mut self) {
        // SAFETY: tile T is configured (trait contract).
        unsafe { std::arch::asm!("tilezero tmm{t}", t = const T, options(nostack, nomem)) }
    }
    unsafe fn load<const T: usize>(&mut self, base: *const u8, stride: usize) {
        // SAFETY: tile T is configured and its rows are readable (trait contract).
        unsafe {
            std::arch::asm!(
                "tileloadd tmm{t}, [{b} + {s}*1]",
                t = const T, b = in(reg) base, s = in(reg) stride,
                options(nostack, readonly)
            )
        }
    }
    unsafe fn store<const T: usize>(&mut self, base: *mut u8, stride: usize) {
        // SAFETY: tile T is configured and its rows are writable (trait contract).
        unsafe {
            std::arch::asm!(
                "tilestored [{b} + {s}*1], tmm{t}",
                t = const T, b = in(reg) base, s = in(reg) stride,
                options(nostack)
            )
        }
    }
    unsafe fn dp<const C: usize, const A: usize, const B: usize>(&mut self) {
        // SAFETY: the three tiles are configured with agreeing shapes (trait contract).
        unsafe {
            std::arch::asm!(
                "tdpbf16ps tmm{c}, tmm{a}, tmm{b}",
                c = const C, a = const A, b = const B,
                options(nostack, nomem)
            )
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
impl TileUnit for Hw {
    unsafe fn configure(&mut self, _: &TileConfig) {
        unreachable!("AMX exists only on x86_64")
    }
    unsafe fn zero<const T: usize>(&mut self) {}
    unsafe fn load<const T: usize>(&mut self, _: *const u8, _: usize) {}
    unsafe fn store<const T: usize>(&mut self, _: *mut u8, _: usize) {}
    unsafe fn dp<const C: usize, const A: usize, const B: usize>(&mut self) {}
}

/// The tile unit as the Intel SDM describes it: eight tiles of 16 rows of
/// 64 bytes, rows and bytes per row from the configuration, loads zeroing
/// what they do not fill, and `tdpbf16ps` adding the two products of each
/// pair in order, in f32 with round-to-nearest-even, denormal inputs read
/// as zero and denormal results flushed to zero.
pub(crate) struct Model {
    cfg: TileConfig,
    tiles: [[[u8; 64]; 16]; 8],
}

impl Model {
    pub(crate) fn new() -> Model {
        Model {
            cfg: TileConfig::micro(1, 1),
            tiles: [[[0; 64]; 16]; 8],
        }
    }

    fn shape(&self, t: usize) -> (usize, usize) {
        (self.cfg.rows[t] as usize, self.cfg.colsb[t] as usize)
    }

    fn word(&self, t: usize, row: usize, w: usize) -> u32 {
        let b = &self.tiles[t][row][4 * w..4 * w + 4];
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
}

/// A bf16 half as f32, denormals read as zero.
fn bf16_daz(h: u32) -> f32 {
    flush(f32::from_bits(h << 16))
}

/// Denormals to zero of the same sign.
fn flush(x: f32) -> f32 {
    if x.is_subnormal() {
        0.0f32.copysign(x)
    } else {
        x
    }
}

/// `acc + a.lo·b.lo + a.hi·b.hi` as `tdpbf16ps` computes one element for
/// one pair (`a`, `b`: pair words, low half first along `k`).
pub(crate) fn dp_pair(acc: f32, a: u32, b: u32) -> f32 {
    let lo = flush(bf16_daz(a & 0xFFFF) * bf16_daz(b & 0xFFFF));
    let hi = flush(bf16_daz(a >> 16) * bf16_daz(b >> 16));
    flush(flush(flush(acc) + lo) + hi)
}

impl TileUnit for Model {
    unsafe fn configure(&mut self, cfg: &TileConfig) {
        assert_eq!(cfg.palette, 1, "palette 1 only");
        assert!(cfg.rows.iter().all(|&r| r <= 16) && cfg.colsb.iter().all(|&c| c <= 64));
        self.cfg = *cfg;
        self.tiles = [[[0; 64]; 16]; 8];
    }
    unsafe fn zero<const T: usize>(&mut self) {
        self.tiles[T] = [[0; 64]; 16];
    }
    unsafe fn load<const T: usize>(&mut self, base: *const u8, stride: usize) {
        let (rows, colsb) = self.shape(T);
        assert!(rows > 0, "tile {T} is not configured");
        self.tiles[T] = [[0; 64]; 16];
        for (r, row) in self.tiles[T].iter_mut().take(rows).enumerate() {
            // SAFETY: row r's colsb bytes are readable (trait contract).
            let src = unsafe { std::slice::from_raw_parts(base.add(r * stride), colsb) };
            row[..colsb].copy_from_slice(src);
        }
    }
    unsafe fn store<const T: usize>(&mut self, base: *mut u8, stride: usize) {
        let (rows, colsb) = self.shape(T);
        assert!(rows > 0, "tile {T} is not configured");
        for (r, row) in self.tiles[T].iter().take(rows).enumerate() {
            // SAFETY: row r's colsb bytes are writable (trait contract).
            let dst = unsafe { std::slice::from_raw_parts_mut(base.add(r * stride), colsb) };
            dst.copy_from_slice(&row[..colsb]);
        }
    }
    unsafe fn dp<const C: usize, const A: usize, const B: usize>(&mut self) {
        let ((cr, cc), (ar, ac), (br, bc)) = (self.shape(C), self.shape(A), self.shape(B));
        assert!(cr == ar && cc == bc && ac == 4 * br, "tdpbf16ps shapes");
        for m in 0..cr {
            for n in 0..cc / 4 {
                let mut acc = f32::from_bits(self.word(C, m, n));
                for k in 0..ac / 4 {
                    acc = dp_pair(acc, self.word(A, m, k), self.word(B, k, n));
                }
                self.tiles[C][m][4 * n..4 * n + 4].copy_from_slice(&acc.to_bits().to_le_bytes());
            }
        }
    }
}

/// Runs `$body` with `$t` the const tile number of accumulator `$i` (0-3)
/// and `$b` the B tile it is multiplied with (5, 6, 7, 5).
macro_rules! per_tile {
    ($i:expr, |$t:ident, $b:ident| $body:expr) => {
        match $i {
            0 => {
                const $t: usize = 0;
                #[allow(dead_code)]
                const $b: usize = 5;
                $body
            }
            1 => {
                const $t: usize = 1;
                #[allow(dead_code)]
                const $b: usize = 6;
                $body
            }
            2 => {
                const $t: usize = 2;
                #[allow(dead_code)]
                const $b: usize = 7;
                $body
            }
            _ => {
                const $t: usize = 3;
                #[allow(dead_code)]
                const $b: usize = 5;
                $body
            }
        }
    };
}

/// `C[R × 16·NT] (+)= A · B` for `p.k` pair rows, then bias and relu: the
/// AMX micro-kernel. Whole steps of 16 pairs run on the tiles (the
/// accumulators loaded from C or zeroed, stored back after the last step);
/// a remainder of fewer pairs, the bias and relu then run on C in scalar
/// code with [`dp_pair`]'s arithmetic.
///
/// # Safety
/// `u` can run the tile instructions; `p.a` holds `R` rows of `p.k` pair
/// words `p.lda` apart (`p.a_ks` = 1), `p.b` a panel packed as
/// [`crate::bf16::Packing::Tiles`]: `NT` groups `p.b_group` words apart,
/// each `p.k` rows of 16 pair words; `p.c` `R` rows of `16·NT` values
/// `p.ldc` apart, and a non-null `p.bias` `16·NT` values.
unsafe fn micro<U: TileUnit, const R: usize, const NT: usize>(u: &mut U, p: &Micro) {
    debug_assert_eq!(p.a_ks, 1, "AMX reads A in rows");
    let nr = 16 * NT;
    let o = Operands::of(p);
    let (a, b, c) = (o.a, o.b, o.c);
    if R > 16 {
        // SAFETY: the caller's contract, passed on.
        unsafe { tiles_2x2::<U, NT>(u, p, &o, R - 16) };
    } else {
        // SAFETY: likewise.
        unsafe { tiles_1x4::<U, R, NT>(u, p, &o) };
    }
    let rest = 16 * o.steps..p.k;
    let bias = (!p.bias.is_null()).then(|| {
        // SAFETY: a non-null bias holds nr values (contract).
        unsafe { std::slice::from_raw_parts(p.bias, nr) }
    });
    if rest.is_empty() && bias.is_none() && !p.relu {
        return;
    }
    for r in 0..R {
        // SAFETY: row r of C holds nr values and A's row r p.k words (contract).
        let (row, a_row) = unsafe {
            (
                std::slice::from_raw_parts_mut(c.add(r * p.ldc), nr),
                std::slice::from_raw_parts(a.add(r * p.lda), p.k),
            )
        };
        for q in rest.clone() {
            for (g, xs) in row.chunks_exact_mut(16).enumerate() {
                // SAFETY: group g < NT holds p.k pair rows of 16 words (contract).
                let b_row =
                    unsafe { std::slice::from_raw_parts(b.add(g * o.b_group + q * 16), 16) };
                for (x, &bw) in xs.iter_mut().zip(b_row) {
                    *x = dp_pair(*x, a_row[q], bw);
                }
            }
        }
        // Separate passes (each element's order is unchanged: remainder,
        // bias, relu) that the compiler vectorizes.
        if let Some(bias) = bias {
            row.iter_mut().zip(bias).for_each(|(x, &b)| *x += b);
        }
        if p.relu {
            // NaN to 0, as the vector kernels' max(x, 0) does.
            row.iter_mut()
                .for_each(|x| *x = if *x > 0.0 { *x } else { 0.0 });
        }
    }
}

/// The operands of [`micro`] as the tile loops address them: A and B in
/// pair words, each stride in bytes (a B tile's rows are contiguous), and
/// B's column groups `b_group` words apart.
struct Operands {
    a: *const u32,
    b: *const u32,
    b_group: usize,
    c: *mut f32,
    a_stride: usize,
    c_stride: usize,
    steps: usize,
}

/// Bytes from one row of a B tile to the next: a group's pair row.
const B_STRIDE: usize = 64;

/// Words of one B tile (16 pair rows of a group): the step from one 16
/// pairs of `k` to the next within a group.
const B_TILE: usize = 256;

impl Operands {
    fn of(p: &Micro) -> Operands {
        Operands {
            a: p.a.cast(),
            b: p.b.cast(),
            b_group: p.b_group,
            c: p.c,
            a_stride: 4 * p.lda,
            c_stride: 4 * p.ldc,
            steps: p.k / 16,
        }
    }

    /// B's tile for step `s` (pairs `16 s..16 s + 16`) of column group `g`.
    fn b_tile(&self, s: usize, g: usize) -> *const u8 {
        self.b.wrapping_add(g * self.b_group + B_TILE * s).cast()
    }
}

/// The whole steps of [`micro`] for `R` ≤ 16 rows: one A tile against the
/// panel's `NT` column tiles, each B tile loaded for its one product.
///
/// # Safety
/// As [`micro`], with `o` its operands.
unsafe fn tiles_1x4<U: TileUnit, const R: usize, const NT: usize>(
    u: &mut U,
    p: &Micro,
    o: &Operands,
) {
    // SAFETY (whole block): the configuration defines every tile named, with
    // the shapes tdpbf16ps needs; each load or store covers R (or 16) rows of
    // 64 bytes inside A, the panel or C as the contract describes.
    unsafe {
        u.configure(&TileConfig::micro(R, NT));
        for i in 0..NT {
            let ci = o.c.add(16 * i).cast::<u8>();
            per_tile!(i, |T, B| if p.accumulate {
                u.load::<T>(ci, o.c_stride)
            } else {
                u.zero::<T>()
            });
        }
        for s in 0..o.steps {
            u.load::<A_TILE>(o.a.add(16 * s).cast(), o.a_stride);
            for i in 0..NT {
                per_tile!(i, |T, B| {
                    u.load::<B>(o.b_tile(s, i), B_STRIDE);
                    u.dp::<T, A_TILE, B>();
                });
            }
        }
        for i in 0..NT {
            let ci = o.c.add(16 * i).cast::<u8>();
            per_tile!(i, |T, B| u.store::<T>(ci, o.c_stride));
        }
    }
}

/// The whole steps of [`micro`] for `16 + r2` rows, 2×2: for each pair of
/// the panel's column tiles, two A tiles (rows 0-15 and the other `r2`)
/// against two B tiles, every loaded tile used for two products. On a
/// Sapphire Rapids-class Xeon a timing loop ran this at 520-640 GFLOP/s per
/// core against the 16-row form's 465-505: the tile loads, not the products,
/// bound both. Each element's products are added in the same order as in
/// the 16-row form.
///
/// # Safety
/// As [`micro`] with `R` = `16 + r2` rows, `o` its operands, and `NT` even.
unsafe fn tiles_2x2<U: TileUnit, const NT: usize>(u: &mut U, p: &Micro, o: &Operands, r2: usize) {
    let a1 = o.a.wrapping_add(16 * p.lda);
    // SAFETY (whole block): the configuration defines tiles 0-7 with the
    // shapes tdpbf16ps needs (rows 0-15 in 0, 1 and 4; the other r2 rows in
    // 2, 3 and 5; B in 6 and 7); each load or store covers those rows of 64
    // bytes inside A, the panel or C.
    unsafe {
        u.configure(&TileConfig::micro_2x2(r2));
        for h in 0..NT / 2 {
            let c0 = o.c.add(32 * h).cast::<u8>();
            let (c1, c2) = (c0.add(64), c0.add(16 * o.c_stride));
            let c3 = c2.add(64);
            if p.accumulate {
                u.load::<0>(c0, o.c_stride);
                u.load::<1>(c1, o.c_stride);
                u.load::<2>(c2, o.c_stride);
                u.load::<3>(c3, o.c_stride);
            } else {
                u.zero::<0>();
                u.zero::<1>();
                u.zero::<2>();
                u.zero::<3>();
            }
            for s in 0..o.steps {
                u.load::<4>(o.a.add(16 * s).cast(), o.a_stride);
                u.load::<6>(o.b_tile(s, 2 * h), B_STRIDE);
                u.dp::<0, 4, 6>();
                u.load::<7>(o.b_tile(s, 2 * h + 1), B_STRIDE);
                u.dp::<1, 4, 7>();
                u.load::<5>(a1.add(16 * s).cast(), o.a_stride);
                u.dp::<2, 5, 6>();
                u.dp::<3, 5, 7>();
            }
            u.store::<0>(c0, o.c_stride);
            u.store::<1>(c1, o.c_stride);
            u.store::<2>(c2, o.c_stride);
            u.store::<3>(c3, o.c_stride);
        }
    }
}

/// CPUID and XCR0 on this CPU.
fn detect() -> Support {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::__cpuid_count;
        // Leaves above the maximum are not read.
        let max = __cpuid_count(0, 0).eax;
        if max < 7 {
            return Support::default();
        }
        let l7 = __cpuid_count(7, 0);
        let osxsave = __cpuid_count(1, 0).ecx >> 27 & 1 == 1;
        let os = osxsave && xcr0() >> 17 & 3 == 3;
        let (max_rows, bytes_per_row) = if max >= 0x1d {
            let p = __cpuid_count(0x1d, 1);
            ((p.ecx & 0xFFFF) as usize, (p.ebx & 0xFFFF) as usize)
        } else {
            (0, 0)
        };
        Support {
            tile: l7.edx >> 24 & 1 == 1,
            bf16: l7.edx >> 22 & 1 == 1,
            os,
            max_rows,
            bytes_per_row,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    Support::default()
}

/// XCR0 (call only where CPUID reports OSXSAVE).
#[cfg(target_arch = "x86_64")]
fn xcr0() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: XGETBV with ECX = 0 is defined when CR4.OSXSAVE is set, which
    // CPUID.1:ECX[27] (checked by the caller) reports.
    unsafe {
        std::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi,
            options(nostack, nomem, preserves_flags))
    };
    u64::from(hi) << 32 | u64::from(lo)
}

/// Asks Linux for the AMX tile data state (needed once per process before
/// the first tile instruction).
fn request_tiles() -> bool {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
        const XFEATURE_XTILEDATA: i64 = 18;
        const SYS_ARCH_PRCTL: i64 = 158;
        let ret: i64;
        // SAFETY: arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA) only extends
        // the process's permitted extended states; it reads and writes no
        // memory of ours (the syscall clobbers rcx and r11).
        unsafe {
            std::arch::asm!("syscall",
                inlateout("rax") SYS_ARCH_PRCTL => ret,
                in("rdi") ARCH_REQ_XCOMP_PERM, in("rsi") XFEATURE_XTILEDATA,
                lateout("rcx") _, lateout("r11") _, options(nostack))
        };
        ret == 0
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    false
}

/// A tiny xorshift stream of test values in [-2, 2).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 22) as f32 - 2.0
        })
        .collect()
}

/// One case of [`self_test`]: rows, pairs along `k`, and the epilogue.
struct Case {
    rows: usize,
    k: usize,
    accumulate: bool,
    bias: bool,
    relu: bool,
}

/// Checks the micro-kernel tables `t4` (`NR` = 64) and `t2` (`NR` = 32)
/// against an f64 sum of the same bf16 products: whole steps of 16 pairs
/// with and without a remainder, onto C or not, with and without bias and
/// relu, full and partial row counts, strides wider than the tile. Each
/// element must be within 1e-5 of the magnitude of its terms, and C's
/// columns past the panel must be untouched; the error names the case.
pub(crate) fn self_test(t4: &[MicroFn; MR], t2: &[MicroFn; MR]) -> Result<(), String> {
    let cases = [
        Case {
            rows: 16,
            k: 40,
            accumulate: true,
            bias: true,
            relu: true,
        },
        Case {
            rows: 5,
            k: 32,
            accumulate: false,
            bias: false,
            relu: false,
        },
        Case {
            rows: 1,
            k: 7,
            accumulate: true,
            bias: false,
            relu: true,
        },
        Case {
            rows: 16,
            k: 0,
            accumulate: false,
            bias: true,
            relu: false,
        },
        Case {
            rows: 11,
            k: 48,
            accumulate: true,
            bias: false,
            relu: false,
        },
        Case {
            rows: 32,
            k: 40,
            accumulate: true,
            bias: true,
            relu: true,
        },
        Case {
            rows: 21,
            k: 33,
            accumulate: false,
            bias: false,
            relu: false,
        },
    ];
    for (nt, table) in [(4usize, t4), (2, t2)] {
        for (n, case) in cases.iter().enumerate() {
            check_case(table[case.rows - 1], 16 * nt, case, n as u64)
                .map_err(|e| format!("NR {}, case {n}: {e}", 16 * nt))?;
        }
    }
    Ok(())
}

/// Runs one [`Case`] of [`self_test`] through `f`.
fn check_case(f: MicroFn, nr: usize, case: &Case, seed: u64) -> Result<(), String> {
    let Case {
        rows,
        k,
        accumulate,
        bias,
        relu,
    } = *case;
    let (lda, ldc) = (k + 3, nr + 5);
    let words = |n: usize, seed: u64| -> Vec<u32> {
        let v = values(2 * n, seed);
        v.chunks_exact(2)
            .map(|p| crate::bf16::pair(p[0], p[1]))
            .collect()
    };
    let (a, b) = (words(rows * lda, seed + 1), words(k * nr, seed + 2));
    // B's word (q, j) as the kernel reads it: packed as tiles.
    let tiles = crate::bf16::Packing::Tiles;
    let b_at = |q: usize, j: usize| b[tiles.offset(k, nr, q, j)];
    let (c0, bias_v) = (values(rows * ldc, seed + 3), values(nr, seed + 4));
    let mut c = c0.clone();
    let micro = Micro {
        k,
        a: a.as_ptr().cast(),
        lda,
        a_ks: 1,
        b: b.as_ptr().cast(),
        b_group: 16 * k,
        c: c.as_mut_ptr(),
        ldc,
        accumulate,
        bias: if bias {
            bias_v.as_ptr()
        } else {
            std::ptr::null()
        },
        relu,
    };
    // SAFETY: A holds rows × k words lda apart, the panel k rows of nr words,
    // C rows × nr values ldc apart, the bias nr values.
    unsafe { f(&micro) };
    let half = |w: u32, shift: u32| f64::from(bf16_daz(w >> shift & 0xFFFF));
    for r in 0..rows {
        for j in 0..ldc {
            let got = f64::from(c[r * ldc + j]);
            if j >= nr {
                if got.to_bits() != f64::from(c0[r * ldc + j]).to_bits() {
                    return Err(format!("C[{r}][{j}] past the panel was written"));
                }
                continue;
            }
            let mut want = if accumulate {
                f64::from(c0[r * ldc + j])
            } else {
                0.0
            };
            let mut mag = want.abs();
            for q in 0..k {
                let (aw, bw) = (a[r * lda + q], b_at(q, j));
                for shift in [0, 16] {
                    let t = half(aw, shift) * half(bw, shift);
                    want += t;
                    mag += t.abs();
                }
            }
            if bias {
                want += f64::from(bias_v[j]);
                mag += f64::from(bias_v[j]).abs();
            }
            if relu {
                want = want.max(0.0);
            }
            if (got - want).abs() > 1e-5 * mag + 1e-30 {
                return Err(format!("C[{r}][{j}] = {got}, expected {want}"));
            }
        }
    }
    Ok(())
}

/// The model's micro-kernel tables (`NR` = 64 or 32), for tests of the
/// GEMM driver around them on any CPU.
#[cfg(test)]
pub(crate) fn model_kernels(nr: usize) -> &'static [MicroFn] {
    match nr {
        64 => &MODEL4,
        _ => &MODEL2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One `tdpbf16ps` on `u` with configuration `cfg`: C (tile 0) loaded
    /// from `c`, A (tile 4) from `a`, B (tile 5) from `b`, all rows `stride`
    /// bytes apart, and C stored back.
    ///
    /// # Safety
    /// `u` can run the instructions and the three buffers hold the rows
    /// that `cfg` gives tiles 0, 4 and 5.
    unsafe fn dp_once<U: TileUnit, T>(
        u: &mut U,
        cfg: &TileConfig,
        c: &mut [f32],
        a: *const T,
        b: *const T,
        stride: usize,
    ) {
        // SAFETY: the caller's contract.
        unsafe {
            u.configure(cfg);
            u.load::<0>(c.as_ptr().cast(), stride);
            u.load::<4>(a.cast(), stride);
            u.load::<5>(b.cast(), stride);
            u.dp::<0, 4, 5>();
            u.store::<0>(c.as_mut_ptr().cast(), stride);
        }
    }

    #[test]
    fn the_model_kernels_pass_the_self_test() {
        self_test(&MODEL4, &MODEL2).unwrap();
    }

    /// [`model_kernel`] without its last pair: a kernel one product short.
    unsafe fn one_pair_short<const R: usize, const NT: usize>(p: &Micro) {
        let q = Micro {
            k: p.k.saturating_sub(1),
            ..*p
        };
        // SAFETY: fewer pairs of the same operands.
        unsafe { model_kernel::<R, NT>(&q) }
    }
    table!(SHORT4, one_pair_short, 4);
    table!(SHORT2, one_pair_short, 2);

    #[test]
    fn the_self_test_rejects_a_kernel_one_product_short() {
        let e = self_test(&SHORT4, &SHORT2).unwrap_err();
        assert!(e.contains("NR 64, case 0") && e.contains("expected"), "{e}");
    }

    /// Pair words of bf16-exact values `lo`, `hi`.
    fn word(lo: f32, hi: f32) -> u32 {
        crate::bf16::pair(lo, hi)
    }

    #[test]
    fn model_tiles_multiply_pairs_as_the_sdm_describes() {
        // C (2×2) += A (2×4) · B (4×2): A's rows as 2 pair words, B as 2
        // pair rows of 2 columns (word (k, n) holds B[2k][n], B[2k+1][n]).
        let a = [
            word(1.0, 2.0),
            word(3.0, 4.0),
            word(0.5, -1.0),
            word(2.0, 0.0),
        ];
        let bm = [[1.0f32, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]];
        let b = [
            word(bm[0][0], bm[1][0]),
            word(bm[0][1], bm[1][1]),
            word(bm[2][0], bm[3][0]),
            word(bm[2][1], bm[3][1]),
        ];
        let mut cfg = TileConfig::micro(2, 1);
        (cfg.colsb[0], cfg.colsb[4], cfg.rows[5], cfg.colsb[5]) = (8, 8, 2, 8);
        let mut c = [10.0f32, 20.0, 30.0, 40.0];
        let mut m = Model::new();
        // SAFETY: every tile named is configured; A, B and C hold 2 rows of 8 bytes.
        unsafe { dp_once(&mut m, &cfg, &mut c, a.as_ptr(), b.as_ptr(), 8) };
        // Row 0 of A is (1, 2, 3, 4), row 1 (0.5, -1, 2, 0).
        let want = [
            10.0 + 1.0 + 2.0 * 3.0 + 3.0 * 5.0 + 4.0 * 7.0,
            20.0 + 2.0 + 2.0 * 4.0 + 3.0 * 6.0 + 4.0 * 8.0,
            30.0 + 0.5 - 3.0 + 2.0 * 5.0,
            40.0 + 1.0 - 4.0 + 2.0 * 6.0,
        ];
        assert_eq!(c, want);
        // A load fills the configured bytes and zeroes the rest of the tile.
        let junk = [0xABu8; 128];
        // SAFETY: tile 4 is configured for 2 rows of 8 bytes; `junk` holds 2 rows at stride 64.
        unsafe { m.load::<4>(junk.as_ptr(), 64) };
        assert!(m.tiles[4][0][..8].iter().all(|&x| x == 0xAB));
        assert!(m.tiles[4][0][8..].iter().all(|&x| x == 0));
        assert!(m.tiles[4][2..].iter().flatten().all(|&x| x == 0));
    }

    #[test]
    fn each_product_is_added_with_its_own_rounding_and_denormals_flush() {
        // 1 + 2^-24 rounds to 1 (a tie, to even) twice; one sum would not.
        let t = 2.0f32.powi(-12);
        assert_eq!(dp_pair(1.0, word(t, t), word(t, t)), 1.0);
        assert_eq!(dp_pair(1.0, word(t, 0.0), word(t, 0.0)), 1.0);
        // A denormal bf16 operand reads as zero; a denormal product flushes.
        let denormal = f32::from_bits(0x0001_0000);
        assert!(denormal.is_subnormal());
        assert_eq!(dp_pair(0.0, word(denormal, 0.0), word(1.0, 0.0)), 0.0);
        let tiny = 2.0f32.powi(-70);
        assert_eq!(dp_pair(0.0, word(tiny, 0.0), word(tiny, 0.0)), 0.0);
        assert_eq!(
            dp_pair(0.5, word(1.5, -2.0), word(2.0, 0.25)),
            0.5 + 3.0 - 0.5
        );
    }

    #[test]
    fn the_mode_follows_the_cpu_the_os_grant_and_the_variable() {
        let full = Support {
            tile: true,
            bf16: true,
            os: true,
            max_rows: 16,
            bytes_per_row: 64,
        };
        assert_eq!(decide(full, None, || true), (Mode::Hardware, None));
        assert_eq!(decide(full, Some("amx"), || true), (Mode::Hardware, None));
        assert_eq!(decide(full, Some("avx512bf16"), || true), (Mode::Off, None));
        assert_eq!(decide(full, Some("emulate"), || true), (Mode::Off, None));
        let refused = decide(full, None, || false);
        assert_eq!(refused.0, Mode::Off);
        assert!(refused.1.unwrap().contains("ARCH_REQ_XCOMP_PERM"));
        let no_os = Support { os: false, ..full };
        assert_eq!(
            decide(no_os, None, || panic!("not asked")),
            (Mode::Off, None)
        );
        let (m, why) = decide(no_os, Some("amx"), || panic!("not asked"));
        assert_eq!(m, Mode::Off);
        assert!(why.unwrap().contains("no AMX"));
        let short_rows = Support {
            max_rows: 8,
            ..full
        };
        assert_eq!(decide(short_rows, None, || true).0, Mode::Off);
        assert_eq!(
            decide(Support::default(), Some("amx-model"), || true).0,
            Mode::Model
        );
        // An unknown value is said, and the default is used.
        let (m, why) = decide(full, Some("tiles"), || true);
        assert_eq!(m, Mode::Hardware);
        assert!(why.unwrap().contains("REFORMC_RT_BF16=`tiles` is none of"));
        assert_eq!(decide(no_os, Some("tiles"), || true).0, Mode::Off);
    }

    /// On a CPU with AMX (not forced off), the instructions pass the
    /// self-test that `mode` runs, loudly: `mode` would fall back quietly
    /// but for one line. Elsewhere it says why it did not run.
    #[test]
    fn hardware_tiles_pass_the_self_test_where_present() {
        let s = detect();
        let env = std::env::var("REFORMC_RT_BF16").ok();
        if !s.complete() || matches!(env.as_deref(), Some("avx512bf16" | "emulate" | "amx-model")) {
            println!("not run: no AMX on this CPU or REFORMC_RT_BF16={env:?} ({s:?})");
            return;
        }
        assert!(request_tiles(), "the kernel refused the tile state");
        self_test(&HW4, &HW2).unwrap();
        assert_eq!(mode(), (Mode::Hardware, None));
    }

    /// One `tdpbf16ps` (one row, 16 columns, 16 pairs) on random operands
    /// across 12 binades, against the exact sum `acc + Σ products` (exact in
    /// f64): the instructions' error stays within 8 units of f32 rounding
    /// (`u` = 2⁻²⁴) of the sum of the terms' magnitudes, a quarter of the 32u
    /// that 32 sequentially rounded additions may reach. Their bits are not
    /// the model's: on a Sapphire Rapids-class Xeon (2026-12-08) they matched
    /// the model's sequential rounding at 37% of elements and a single
    /// rounding of the exact sum at 44%, with the largest error 2.8e-7 of the
    /// terms' magnitudes (4.6u). So the hardware adds otherwise than the
    /// SDM's pseudo-code, and the model describes the order of operations,
    /// not the bits.
    #[test]
    fn hardware_dot_products_stay_within_eight_roundings_of_the_exact_sum() {
        if !detect().complete() || !request_tiles() {
            println!("not run: no AMX on this CPU");
            return;
        }
        let mut cfg = TileConfig::micro(1, 1);
        cfg.rows[5] = 16;
        let mut seed = 7u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        // A bf16 of either sign, exponent within ±6 of 1, random mantissa.
        let mut bf = || {
            let r = next();
            let e = 121 + (r % 12) as u32;
            (((r >> 20) as u32 & 1) << 15) | (e << 7) | ((r >> 32) as u32 & 0x7F)
        };
        let (mut worst, mut same, mut n) = (0f64, 0usize, 0usize);
        for _ in 0..500 {
            let a: Vec<u32> = (0..16).map(|_| bf() | (bf() << 16)).collect();
            let b: Vec<u32> = (0..256).map(|_| bf() | (bf() << 16)).collect();
            let c0: Vec<f32> = (0..16).map(|_| f32::from_bits(bf() << 16) * 3.0).collect();
            let mut c = c0.clone();
            // SAFETY: the process holds the tile state; each tile covers
            // exactly one of these buffers (1×64, 1×64 and 16×64 bytes).
            unsafe { dp_once(&mut Hw, &cfg, &mut c, a.as_ptr(), b.as_ptr(), 64) };
            let half = |w: u32, s: u32| f64::from(f32::from_bits(((w >> s) & 0xFFFF) << 16));
            for col in 0..16 {
                let terms: Vec<f64> = (0..16)
                    .flat_map(|k| {
                        let (aw, bw) = (a[k], b[k * 16 + col]);
                        [half(aw, 0) * half(bw, 0), half(aw, 16) * half(bw, 16)]
                    })
                    .chain([f64::from(c0[col])])
                    .collect();
                let exact: f64 = terms.iter().sum();
                let scale: f64 = terms.iter().map(|t| t.abs()).sum();
                worst = worst.max((f64::from(c[col]) - exact).abs() / scale);
                let model = (0..16).fold(c0[col], |acc, k| dp_pair(acc, a[k], b[k * 16 + col]));
                same += usize::from(model.to_bits() == c[col].to_bits());
                n += 1;
            }
        }
        println!("tdpbf16ps: worst error {worst:.2e} of the terms' magnitudes; the model's bits at {same} of {n}");
        assert!(
            worst <= 8.0 * f64::from(f32::EPSILON) / 2.0,
            "error {worst:e}"
        );
    }

    #[test]
    fn detection_agrees_with_the_kernel_cpu_flags() {
        let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
            println!("not checked: no /proc/cpuinfo");
            return;
        };
        let flags: Vec<&str> = info
            .lines()
            .find(|l| l.starts_with("flags"))
            .map(|l| l.split_whitespace().collect())
            .unwrap_or_default();
        let s = detect();
        assert_eq!(s.tile, flags.contains(&"amx_tile"), "{s:?}");
        assert_eq!(s.bf16, flags.contains(&"amx_bf16"), "{s:?}");
        if !s.tile {
            assert_ne!(mode().0, Mode::Hardware);
        }
    }
}
