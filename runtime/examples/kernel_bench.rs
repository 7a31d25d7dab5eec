//! Micro-benchmarks of the runtime kernels (run with `--release`).
//!
//! `cargo run --release -p reformc-runtime --example kernel_bench -- [gemm] [kernels] [mm] [act] [attn] [reps=N]`
//! (no section named: gemm, act and attn; `bf16` runs every product with bf16 operands, as
//! `--precision bf16` does, on AMX tiles where the CPU has them; `REFORMC_RT_BF16=avx512bf16`
//! for AVX-512 BF16 instead). Every case prints "median (best)"
//! of N runs (default 7) after a warm-up: on a shared machine the best run is
//! what the kernel does when it has the cores to itself.
//!
//! - `gemm`: `linear` (x·wᵀ + b) GFLOP/s at the model's shapes, 1 and 2 threads;
//!   `kernels`: the same for every micro-kernel this CPU can run;
//!   `mm`: `matrixmultiply::sgemm` at the same shapes (rows split over threads).
//! - `act`: the fused bias + activation epilogue (65536×256→512).
//! - `wgrad`: weight-gradient products `xᵀ·dy` (x `[L, in]` read transposed
//!   in place, dy `[L, out]`) at L = 16K, as a training step runs them.
//! - `paper`: the paper model's feed-forward stack and a 1024→1024
//!   projection at L = 8192, 2 threads.
//! - `dense`: the attention's two projections (layer norm, 256→128 twice) as
//!   two fused stacks and as one pair call (`dense_pair`), at L = 16K/64K.
//! - `attn_grad`: the LSH attention gradient alone (bench model, one round).
//! - `attn`: LSH hashing, LSH attention and its gradient at L = 16K/64K (B=1, H=2, d=64, r=1/4,
//!   chunk 64, one chunk before) and at the paper model's shape (L = 8192, H=8,
//!   d=128, r=4, chunk 128, 512 buckets), and local attention for comparison.

use reformc_runtime::attention::{local_attention, lsh_attention, lsh_attention_grad, lsh_hash};
use reformc_runtime::dense::{dense, dense_pair, Layer, Mode, Norm, Pair, Stack};
use reformc_runtime::gemm::{available_kernels, kernel, linear_with, Kernel};
use reformc_runtime::{set_threads, Activation};
use std::time::Instant;

fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// (median, best) seconds of `reps` runs after a warm-up.
fn timed(reps: usize, mut f: impl FnMut()) -> (f64, f64) {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(|a, b| a.total_cmp(b));
    (t[reps / 2], t[0])
}

/// "median (best)" as a rate `work / time`.
fn rate(work: f64, t: (f64, f64)) -> String {
    format!("{:.1} ({:.1})", work / t.0, work / t.1)
}

/// "median (best)" in milliseconds.
fn ms(t: (f64, f64)) -> String {
    format!("{:.1} ({:.1})", t.0 * 1e3, t.1 * 1e3)
}

const SHAPES: [(usize, usize); 5] = [(256, 128), (128, 256), (256, 512), (512, 256), (512, 320)];

fn bench_gemm(reps: usize, kernels: &[Kernel]) {
    println!("GEMM y = x·wᵀ + b (f32), GFLOP/s, median (best) of {reps}");
    println!(
        "{:<16} {:>6} {:>9} {:>14} {:>14}",
        "kernel", "rows", "in->out", "1 thr", "2 thr"
    );
    for kern in kernels {
        for rows in [16384usize, 65536] {
            for (inp, out) in SHAPES {
                let (x, w, b) = (data(rows * inp, 1), data(out * inp, 2), data(out, 3));
                let mut y = vec![0.0f32; rows * out];
                let gflop = 2.0 * (rows * inp * out) as f64 / 1e9;
                let cells: Vec<String> = [1i64, 2]
                    .into_iter()
                    .map(|thr| {
                        set_threads(thr).unwrap();
                        rate(
                            gflop,
                            timed(reps, || {
                                let b = Some(&b[..]);
                                linear_with(
                                    kern,
                                    &x,
                                    rows,
                                    inp,
                                    &w,
                                    out,
                                    b,
                                    Activation::None,
                                    &mut y,
                                )
                                .unwrap()
                            }),
                        )
                    })
                    .collect();
                let name = format!("{kern:?}");
                let shape = format!("{inp}->{out}");
                println!(
                    "{name:<16} {rows:>6} {shape:>9} {:>14} {:>14}",
                    cells[0], cells[1]
                );
            }
        }
    }
}

fn bench_dense(reps: usize) {
    println!("attention projections LN + 256->128 twice, GFLOP/s, median (best) of {reps}");
    println!("{:>6} {:>16} {:>16}", "rows", "two stacks", "pair");
    let (inp, out) = (256, 128);
    let (g, be) = (data(inp, 4), data(inp, 5));
    let (w1, w2) = (data(out * inp, 2), data(out * inp, 3));
    let layer = |w| Layer {
        w,
        out,
        b: None,
        act: Activation::None,
    };
    let norm = Some(Norm {
        w: &g,
        b: &be,
        eps: 1e-12,
    });
    for rows in [16384usize, 65536] {
        let x = data(rows * inp, 1);
        let (mut y1, mut y2) = (vec![0.0f32; rows * out], vec![0.0f32; rows * out]);
        let gflop = 4.0 * (rows * inp * out) as f64 / 1e9;
        let two = timed(reps, || {
            for (w, y) in [(&w1, &mut y1), (&w2, &mut y2)] {
                let st = Stack {
                    norm,
                    first: layer(w),
                    second: None,
                };
                dense(&st, &x, rows, inp, y, Mode::Store).unwrap();
            }
        });
        let pair = Pair {
            norm,
            first: layer(&w1),
            second: layer(&w2),
        };
        let one = timed(reps, || {
            dense_pair(&pair, &x, rows, inp, &mut y1, &mut y2).unwrap();
        });
        println!(
            "{rows:>6} {:>16} {:>16}",
            rate(gflop, two),
            rate(gflop, one)
        );
    }
}

/// The paper model's dense work at L = 8192 (D 1024, d_ff 4096): the
/// feed-forward stack (LN, 1024->4096 relu, 4096->1024, onto the residual)
/// and one 1024->1024 projection, 2 threads.
fn bench_paper(reps: usize) {
    println!("paper model dense stacks, L = 8192, 2 threads, GFLOP/s, median (best) of {reps}");
    let (rows, d, ff) = (8192usize, 1024usize, 4096usize);
    set_threads(2).unwrap();
    let (g, be) = (data(d, 4), data(d, 5));
    let (w1, b1, w2, b2) = (data(ff * d, 6), data(ff, 7), data(d * ff, 8), data(d, 9));
    let wp = data(d * d, 10);
    let x = data(rows * d, 1);
    let mut y = vec![0.0f32; rows * d];
    let norm = Some(Norm {
        w: &g,
        b: &be,
        eps: 1e-12,
    });
    let ffs = Stack {
        norm,
        first: Layer {
            w: &w1,
            out: ff,
            b: Some(&b1),
            act: Activation::Relu,
        },
        second: Some(Layer {
            w: &w2,
            out: d,
            b: Some(&b2),
            act: Activation::None,
        }),
    };
    let t = timed(reps, || {
        dense(&ffs, &x, rows, d, &mut y, Mode::Accumulate).unwrap()
    });
    println!(
        "feed-forward    {:>16}",
        rate(4.0 * (rows * d * ff) as f64 / 1e9, t)
    );
    let proj = Stack {
        norm: None,
        first: Layer {
            w: &wp,
            out: d,
            b: None,
            act: Activation::None,
        },
        second: None,
    };
    let t = timed(reps, || {
        dense(&proj, &x, rows, d, &mut y, Mode::Store).unwrap()
    });
    println!(
        "1024->1024      {:>16}",
        rate(2.0 * (rows * d * d) as f64 / 1e9, t)
    );
}

fn bench_wgrad(reps: usize) {
    use reformc_runtime::tensor_ops::{matmul_batch_t, Transposed};
    println!("weight gradients x^T.dy, L = 16384, GFLOP/s, median (best) of {reps}");
    println!("(cold: 64 MiB written between runs, so the operands come from memory as in a step)");
    println!("{:>12} {:>16} {:>16}", "in x out", "2 thr", "2 thr, cold");
    let len = 16384usize;
    let mut flush = vec![0u8; 64 << 20];
    for (inp, out) in [
        (256usize, 512usize),
        (512, 256),
        (256, 128),
        (128, 256),
        (512, 320),
    ] {
        let (x, dy) = (data(len * inp, 1), data(len * out, 2));
        let mut dw = vec![0.0f32; inp * out];
        let t = Transposed { a: true, b: false };
        let gflop = 2.0 * (len * inp * out) as f64 / 1e9;
        let warm = timed(reps, || {
            matmul_batch_t(&x, &dy, 1, inp, len, out, t, &mut dw).unwrap();
        });
        let mut cold: Vec<f64> = (0..reps)
            .map(|i| {
                flush
                    .iter_mut()
                    .for_each(|b| *b = b.wrapping_add(i as u8 | 1));
                let s = Instant::now();
                matmul_batch_t(&x, &dy, 1, inp, len, out, t, &mut dw).unwrap();
                s.elapsed().as_secs_f64()
            })
            .collect();
        cold.sort_by(|a, b| a.total_cmp(b));
        let cold = (cold[reps / 2], cold[0]);
        println!(
            "{:>12} {:>16} {:>16}",
            format!("{inp}x{out}"),
            rate(gflop, warm),
            rate(gflop, cold)
        );
    }
    std::hint::black_box(&flush);
}

fn bench_matrixmultiply(reps: usize) {
    println!("matrixmultiply::sgemm (no bias), GFLOP/s, median (best) of {reps}");
    for rows in [16384usize, 65536] {
        for (inp, out) in SHAPES {
            let (x, w) = (data(rows * inp, 1), data(out * inp, 2));
            let mut y = vec![0.0f32; rows * out];
            let gflop = 2.0 * (rows * inp * out) as f64 / 1e9;
            let w = &w;
            let cells: Vec<String> = [1usize, 2]
                .into_iter()
                .map(|thr| {
                    let t = timed(reps, || {
                        let per = rows.div_ceil(thr);
                        std::thread::scope(|s| {
                            for (xs, ys) in x.chunks(per * inp).zip(y.chunks_mut(per * out)) {
                                s.spawn(move || {
                                    let m = xs.len() / inp;
                                    // SAFETY: xs is m×inp, w is out×inp read transposed, ys is m×out.
                                    unsafe {
                                        matrixmultiply::sgemm(
                                            m,
                                            inp,
                                            out,
                                            1.0,
                                            xs.as_ptr(),
                                            inp as isize,
                                            1,
                                            w.as_ptr(),
                                            1,
                                            inp as isize,
                                            0.0,
                                            ys.as_mut_ptr(),
                                            out as isize,
                                            1,
                                        )
                                    }
                                });
                            }
                        });
                    });
                    rate(gflop, t)
                })
                .collect();
            let shape = format!("{inp}->{out}");
            println!("{rows:>6} {shape:>9} {:>14} {:>14}", cells[0], cells[1]);
        }
    }
}

fn bench_activations(reps: usize) {
    let (rows, inp, out) = (65536usize, 256usize, 512usize);
    let (x, w, b) = (data(rows * inp, 1), data(out * inp, 2), data(out, 3));
    let mut y = vec![0.0f32; rows * out];
    println!("linear {rows}x{inp}->{out} + bias + activation, ms, median (best) of {reps}");
    println!("{:<10} {:>14} {:>14}", "activation", "1 thr", "2 thr");
    for act in Activation::ALL {
        let cells: Vec<String> = [1i64, 2]
            .into_iter()
            .map(|thr| {
                set_threads(thr).unwrap();
                ms(timed(reps, || {
                    reformc_runtime::linear(&x, rows, inp, &w, out, Some(&b), act, &mut y).unwrap()
                }))
            })
            .collect();
        println!(
            "{:<10} {:>14} {:>14}",
            format!("{act:?}"),
            cells[0],
            cells[1]
        );
    }
}

/// One attention shape of the `attn` section.
struct AttnCase {
    what: &'static str,
    len: usize,
    heads: usize,
    d: usize,
    chunk: usize,
    factors: Vec<usize>,
    rounds: &'static [usize],
}

fn bench_attention(reps: usize) {
    // HF's automatic bucket counts for chunk 64 at these lengths (REFORMER.md §1.3).
    let bench = |len, factors| AttnCase {
        what: "bench model",
        len,
        heads: 2,
        d: 64,
        chunk: 64,
        factors,
        rounds: &[1, 4],
    };
    let cases = [
        bench(16384, vec![16, 32]),
        bench(65536, vec![32, 64]),
        AttnCase {
            what: "paper model",
            len: 8192,
            heads: 8,
            d: 128,
            chunk: 128,
            factors: vec![512],
            rounds: &[4],
        },
    ];
    println!("LSH, B=1, before=1 after=0 causal, ms, median (best) of {reps}");
    println!(
        "{:>11} {:>6} {:>2} {:>2} {:>3} {:>9} {:>4} {:>14} {:>14} {:>14}",
        "model", "L", "H", "r", "d", "buckets", "thr", "hash", "attention", "gradient"
    );
    for c in &cases {
        bench_attention_case(c, reps);
    }
}

/// The LSH attention gradient alone (bench model, one round), as a
/// training step runs it, at 1 and 2 threads: for profiling the backward.
fn bench_attention_grad(reps: usize) {
    println!("LSH attention gradient, bench model (H=2, d=64, chunk 64, 1 round), ms, median (best) of {reps}");
    for len in [16384usize, 65536] {
        let (h, d) = (2usize, 64usize);
        let (qk, v, dy) = (
            data(len * h * d, 4),
            data(len * h * d, 5),
            data(len * h * d, 7),
        );
        let buckets: Vec<i64> = (0..h * len).map(|i| (i * 7919 % 31) as i64).collect();
        let mut out = vec![0.0f32; len * h * d];
        lsh_attention(
            &qk, &v, &buckets, None, 1, len, h, d, 1, 64, 1, 0, true, &mut out,
        )
        .unwrap();
        let mut grads = vec![0.0f32; 2 * len * h * d];
        for thr in [1i64, 2] {
            set_threads(thr).unwrap();
            let t = timed(reps, || {
                lsh_attention_grad(
                    &qk, &v, &buckets, &out, &dy, None, 1, len, h, d, 1, 64, 1, 0, true, &mut grads,
                )
                .unwrap()
            });
            println!("L = {len:>6}, {thr} thr: {:>14}", ms(t));
        }
    }
}

fn bench_attention_case(c: &AttnCase, reps: usize) {
    let AttnCase {
        what,
        len,
        heads: h,
        d,
        chunk,
        ref factors,
        rounds: round_counts,
    } = *c;
    let half: usize = factors.iter().map(|f| f / 2).sum();
    let (qk, v) = (data(len * h * d, 4), data(len * h * d, 5));
    let mut out = vec![0.0f32; len * h * d];
    for &rounds in round_counts {
        let rot = data(h * d * rounds * half, 6);
        let mut buckets = vec![0i64; h * rounds * len];
        for thr in [1i64, 2] {
            set_threads(thr).unwrap();
            let th = timed(reps, || {
                lsh_hash(&qk, &rot, None, 1, len, h, d, rounds, factors, &mut buckets).unwrap()
            });
            let ta = timed(reps, || {
                lsh_attention(
                    &qk, &v, &buckets, None, 1, len, h, d, rounds, chunk, 1, 0, true, &mut out,
                )
                .unwrap()
            });
            let dy = data(len * h * d, 7);
            let mut grads = vec![0.0f32; 2 * len * h * d];
            let tg = timed(reps, || {
                lsh_attention_grad(
                    &qk, &v, &buckets, &out, &dy, None, 1, len, h, d, rounds, chunk, 1, 0, true,
                    &mut grads,
                )
                .unwrap()
            });
            let f = format!("{factors:?}").replace(' ', "");
            println!(
                "{what:>11} {len:>6} {h:>2} {rounds:>2} {d:>3} {f:>9} {thr:>4} {:>14} {:>14} {:>14}",
                ms(th),
                ms(ta),
                ms(tg)
            );
        }
    }
    for thr in [1i64, 2] {
        set_threads(thr).unwrap();
        let t = timed(reps, || {
            local_attention(
                &qk, &qk, &v, None, 1, len, h, d, d, 0.125, chunk, 1, 0, true, &mut out,
            )
            .unwrap()
        });
        println!(
            "{what:>11} {len:>6} {h:>2}  local attention (same shape)  {thr:>4} {:>14}",
            ms(t)
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let reps = args
        .iter()
        .find_map(|a| a.strip_prefix("reps=").and_then(|n| n.parse().ok()))
        .unwrap_or(7)
        .max(1);
    let sections: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with("reps=") && *a != "bf16")
        .collect();
    if args.iter().any(|a| a == "bf16") {
        // The pool's tasks inherit the caller's precision.
        reformc_runtime::bf16::set(true);
        let tiles = match reformc_runtime::amx::mode() {
            (reformc_runtime::amx::Mode::Hardware, _) => "AMX tiles",
            (reformc_runtime::amx::Mode::Model, _) => "the AMX tile model (slow)",
            _ if reformc_runtime::bf16::hardware() => "AVX-512 BF16",
            _ => "f32 kernels on bf16-rounded operands",
        };
        println!("bf16 operands (--precision bf16), row-major products on {tiles}");
    }
    let has = |s: &str| {
        sections.contains(&s) || (sections.is_empty() && ["gemm", "act", "attn"].contains(&s))
    };
    if has("kernels") {
        bench_gemm(reps, &available_kernels());
    } else if has("gemm") {
        bench_gemm(reps, &[*kernel()]);
    }
    if has("mm") {
        bench_matrixmultiply(reps);
    }
    if has("wgrad") {
        bench_wgrad(reps);
    }
    if has("dense") {
        bench_dense(reps);
    }
    if has("paper") {
        bench_paper(reps);
    }
    if has("act") {
        bench_activations(reps);
    }
    if has("attn") {
        bench_attention(reps);
    }
    if has("attn_grad") {
        bench_attention_grad(reps);
    }
}
