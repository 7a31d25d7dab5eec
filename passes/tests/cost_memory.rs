//! Cost model and memory planner on whole graphs: scaling with the sequence
//! length, and hand graphs with known answers.

use crate::attn_support;

use attn_support::*;
use reformc_ir::{parse, DType, OpKind};
use reformc_passes::attention::AttentionPass;
use reformc_passes::cost::{dim_env, graph_cost, op_cost};
use reformc_passes::memory_plan::{plan_memory, Stage};
use reformc_passes::{Pass, PassOptions};

fn attention_flops(g: &reformc_ir::Graph, kind: OpKind, len: u64) -> (u64, u64) {
    let env = dim_env(g, 1, len);
    let v = g
        .walk()
        .into_iter()
        .find(|v| g.node(*v).op.kind == kind)
        .unwrap();
    let c = op_cost(g, v, &env).unwrap();
    (c.flops, c.temp_bytes)
}

#[test]
fn full_attention_is_quadratic_in_l_and_lsh_linear() {
    let g = example_graph(DType::F32);
    let (f1, t1) = attention_flops(&g, OpKind::Attention, 8192);
    let (f2, t2) = attention_flops(&g, OpKind::Attention, 16384);
    assert!((f2 as f64 / f1 as f64 - 4.0).abs() < 0.01, "{f1} {f2}");
    assert!((t2 as f64 / t1 as f64 - 4.0).abs() < 0.05, "{t1} {t2}"); // logits plus an O(L) key copy
    let mut h = g.clone();
    let opts = PassOptions {
        seq_len: Some(8192),
        attention: Some("lsh".into()),
        ..Default::default()
    };
    AttentionPass.run(&mut h, &opts).unwrap();
    let (l1, m1) = attention_flops(&h, OpKind::LshAttention, 8192);
    let (l2, m2) = attention_flops(&h, OpKind::LshAttention, 16384);
    let r = l2 as f64 / l1 as f64;
    assert!(r > 1.95 && r < 2.1, "lsh FLOPs ratio {r}");
    let r = m2 as f64 / m1 as f64;
    assert!(r > 1.9 && r < 2.01, "lsh temporaries ratio {r}");
    // Whole-model static peak: quadratic before, linear after.
    let peak =
        |g: &reformc_ir::Graph, l| plan_memory(g, &dim_env(g, 1, l)).unwrap().arena_bytes as f64;
    assert!(peak(&g, 16384) / peak(&g, 8192) > 3.5);
    assert!(peak(&h, 16384) / peak(&h, 8192) < 2.1);
    let total = graph_cost(&h, &dim_env(&h, 1, 8192)).unwrap().total.flops;
    assert!(total > 6 * l1);
}

#[test]
fn memory_plan_of_an_attention_with_known_answer() {
    // B=1, L=16, width 8, 2 heads: logits 1*2*16*16*4 = 2048 B, scaled keys 16*8*4 = 512 B,
    // output 512 B; the input is the caller's.
    let full = parse("graph {\n %0 = input {name=\"x\"} : f32[B,L,8]\n %1 = attention %0, %0, %0 {heads=2, scale=0.5} : f32[B,L,8]\n output \"y\" = %1\n}").unwrap();
    let p = plan_memory(&full, &dim_env(&full, 1, 16)).unwrap();
    assert_eq!(
        (p.input_bytes, p.arena_bytes, p.live_peak_bytes),
        (512, 512 + 2048 + 512, 3072)
    );
    // kv_chunk=4: one 1*2*16*4*4 = 512 B block, accumulators 2*16*(4+2)*4 = 768 B, keys 512 B.
    let exact = parse("graph {\n %0 = input {name=\"x\"} : f32[B,L,8]\n %1 = attention %0, %0, %0 {heads=2, kv_chunk=4, scale=0.5} : f32[B,L,8]\n output \"y\" = %1\n}").unwrap();
    let p = plan_memory(&exact, &dim_env(&exact, 1, 16)).unwrap();
    assert_eq!(p.arena_bytes, 512 + 512 + 768 + 512);
}

#[test]
fn memory_plan_of_a_reversible_block_with_known_answer() {
    // %1 (128 B) is updated in place by the block; f's argument is a view of it and
    // g's a view of the result; %4 and %6 (64 B each) overlap at g's step: 256 B.
    let g = parse(
        "graph {\n %0 = input {name=\"x\"} : f32[4,8]\n %1 = exp %0 : f32[4,8]\n %2 = reversible_block %1 : f32[4,8] {\n  f(%3: f32[4,4]) {\n   %4 = neg %3 : f32[4,4]\n   yield %4\n  }\n  g(%5: f32[4,4]) {\n   %6 = exp %5 : f32[4,4]\n   yield %6\n  }\n }\n output \"y\" = %2\n}",
    )
    .unwrap();
    reformc_ir::verify(&g).unwrap();
    let p = plan_memory(&g, &Default::default()).unwrap();
    assert_eq!((p.arena_bytes, p.live_peak_bytes), (256, 256));
    assert_eq!(p.buffers.len(), 3);
    assert_eq!(
        p.buffers
            .iter()
            .find(|b| b.size == 128)
            .unwrap()
            .values
            .len(),
        4
    );
}

#[test]
fn per_layer_breakdown_of_a_fixture() {
    let case = Case::load(&fixture("causal_mixed_r2"));
    let g = case.graph(DType::F32, case.replay_source());
    let p = plan_memory(&g, &dim_env(&g, 1, 64)).unwrap();
    let stages: Vec<Stage> = p.stages.iter().map(|s| s.stage).collect();
    assert_eq!(
        stages,
        [
            Stage::Inputs,
            Stage::Embeddings,
            Stage::Layer(0),
            Stage::Layer(1),
            Stage::Layer(2),
            Stage::Layer(3),
            Stage::Head
        ]
    );
    let weights: u64 = p.stages.iter().map(|s| s.weight_bytes).sum();
    assert_eq!(weights, p.weight_bytes);
    assert!(p.arena_bytes >= p.live_peak_bytes);
    assert!(p
        .stages
        .iter()
        .all(|s| s.peak_live_bytes <= p.live_peak_bytes));
}
