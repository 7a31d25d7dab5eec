//! Modules from reformc's MLIR backend through IREE: compiled for the CPU
//! (`llvm-cpu`) and for Vulkan (SPIR-V on Mesa's software `llvmpipe`
//! device), run on random inputs and compared with the reference
//! interpreter (1e-4 relative to max(|reference|, 1)). Weights go both ways:
//! as leading arguments and embedded as `dense_resource` blobs.
//!
//! IREE comes from `.venv-iree/` (`scripts/setup.sh`); without it these tests
//! fail saying so.

use crate::common;

use common::iree::{Device, Iree};
use ndarray::{ArrayD, IxDyn};
use reformc_backend_mlir::{emit_module_with_weights, EmitOptions, WeightsMode};
use reformc_interp::Tensor;
use std::collections::BTreeMap;

/// Deterministic values in [-1, 1).
fn random(shape: &[usize], seed: u64) -> Tensor {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let data = (0..shape.iter().product::<usize>())
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    Tensor::F32(ArrayD::from_shape_vec(IxDyn(shape), data).unwrap())
}

/// Runs `text` (a graph) with random weights and inputs of `shapes` (weights
/// then inputs, in graph order) through IREE on `device` in `mode`, and
/// compares every output with the interpreter.
fn check(text: &str, shapes: &[&[usize]], device: Device, mode: WeightsMode) {
    let g = reformc_ir::parse(text).unwrap_or_else(|e| panic!("{e}"));
    reformc_ir::verify(&g).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<String> = g
        .weights()
        .into_iter()
        .chain(g.inputs())
        .map(|(n, _)| n.to_string())
        .collect();
    assert_eq!(names.len(), shapes.len(), "one shape per argument");
    let n_weights = g.weights().len();
    let tensors: Vec<Tensor> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| random(s, i as u64 + 7))
        .collect();
    let weights: BTreeMap<String, Tensor> = names[..n_weights]
        .iter()
        .cloned()
        .zip(tensors[..n_weights].iter().cloned())
        .collect();
    let inputs: BTreeMap<String, Tensor> = names[n_weights..]
        .iter()
        .cloned()
        .zip(tensors[n_weights..].iter().cloned())
        .collect();
    let want = reformc_interp::run(&g, &inputs, &weights).unwrap_or_else(|e| panic!("{e}"));
    let module = emit_module_with_weights(&g, &EmitOptions { weights_mode: mode }, &weights)
        .unwrap_or_else(|e| panic!("{e}"));
    let args = match mode {
        WeightsMode::Args => &tensors[..],
        WeightsMode::Embed => &tensors[n_weights..],
    };
    let got = Iree::find()
        .run_module(&module, device, args, g.outputs.len())
        .unwrap_or_else(|e| panic!("{e}\n{module}"));
    for ((name, _), x) in g.outputs.iter().zip(&got) {
        let w = &want[name];
        assert_eq!(x.shape(), w.shape(), "output {name} on {device:?}");
        let (x, w) = (x.to_f64(), w.to_f64());
        let d = x
            .iter()
            .zip(w.iter())
            .map(|(&a, &b)| (a - b).abs() / b.abs().max(1.0))
            .fold(0.0f64, f64::max);
        assert!(
            d <= 1e-4,
            "output {name} on {device:?} ({mode:?}): IREE differs from the interpreter by {d:e}"
        );
    }
}

const ELEMENTWISE: &str = "graph {
  %0 = input {name=\"x\"} : f32[B,L,8]
  %1 = weight {name=\"layer.bias\"} : f32[8]
  %2 = add %0, %1 : f32[B,L,8]
  %3 = act %2 {fn=\"gelu\"} : f32[B,L,8]
  %4 = tanh %3 : f32[B,L,8]
  %5 = exp %4 : f32[B,L,8]
  %6 = rsqrt %5 : f32[B,L,8]
  %7 = lt %0, %1 : bool[B,L,8]
  %8 = select %7, %6, %0 : f32[B,L,8]
  %9 = act %8 {fn=\"silu\"} : f32[B,L,8]
  %10 = max %9, %0 : f32[B,L,8]
  %11 = div %10, %5 : f32[B,L,8]
  output \"y\" = %11
}
";

const MATMUL_SOFTMAX: &str = "graph {
  %0 = weight {name=\"w\"} : f32[1,8,6]
  %1 = input {name=\"x\"} : f32[B,L,8]
  %2 = matmul %1, %0 : f32[B,L,6]
  %3 = softmax %2 {axis=2} : f32[B,L,6]
  %4 = reduce %2 {axes=[2], keepdim, kind=\"mean\"} : f32[B,L,1]
  %5 = reduce %2 {axes=[1], kind=\"logsumexp\"} : f32[B,6]
  %6 = sub %2, %4 : f32[B,L,6]
  output \"p\" = %3
  output \"c\" = %6
  output \"l\" = %5
}
";

const CONCAT_SLICE: &str = "graph {
  %0 = input {name=\"a\"} : f32[B,L,4]
  %1 = input {name=\"b\"} : f32[B,L,6]
  %2 = concat %0, %1 {axis=2} : f32[B,L,10]
  %3 = slice %2 {axis=2, end=9, start=2} : f32[B,L,7]
  %4 = transpose %3 {perm=[0,2,1]} : f32[B,7,L]
  %5 = reduce %4 {axes=[2], kind=\"max\"} : f32[B,7]
  %6 = reduce %3 {axes=[0,1], kind=\"sum\"} : f32[7]
  output \"s\" = %5
  output \"t\" = %6
}
";

/// Integer token ids and a rank-0 input, as the models' `input_ids` and `seed`.
const INTEGER_AND_SCALAR: &str = "graph {
  %0 = input {name=\"input_ids\"} : i64[B,L]
  %1 = input {name=\"seed\"} : i64[]
  %2 = add %0, %1 : i64[B,L]
  %3 = cast %2 : f32[B,L]
  %4 = weight {name=\"scale\"} : f32[]
  %5 = mul %3, %4 : f32[B,L]
  output \"y\" = %5
  output \"ids\" = %2
}
";

#[test]
fn integer_and_rank_0_inputs_on_iree_cpu_and_vulkan() {
    let g = reformc_ir::parse(INTEGER_AND_SCALAR).unwrap();
    let ids = Tensor::I64(ArrayD::from_shape_fn(IxDyn(&[2, 5]), |ix| {
        (ix[0] * 7 + ix[1] * 3) as i64 - 4
    }));
    let seed = Tensor::I64(ArrayD::from_elem(IxDyn(&[]), 1_000_000_007));
    let scale = Tensor::F32(ArrayD::from_elem(IxDyn(&[]), 0.5f32));
    let weights: BTreeMap<String, Tensor> = [("scale".to_string(), scale)].into();
    let inputs: BTreeMap<String, Tensor> = [
        ("input_ids".to_string(), ids.clone()),
        ("seed".to_string(), seed.clone()),
    ]
    .into();
    let want = reformc_interp::run(&g, &inputs, &weights).unwrap();
    let module = emit_module_with_weights(
        &g,
        &EmitOptions {
            weights_mode: WeightsMode::Embed,
        },
        &weights,
    )
    .unwrap();
    for device in [Device::Cpu, Device::Vulkan] {
        let got = Iree::find()
            .run_module(&module, device, &[ids.clone(), seed.clone()], 2)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got[0], want["y"], "{device:?}");
        assert_eq!(got[1], want["ids"], "{device:?}");
    }
}

#[test]
fn elementwise_on_iree_cpu_and_vulkan() {
    for device in [Device::Cpu, Device::Vulkan] {
        check(ELEMENTWISE, &[&[8], &[2, 5, 8]], device, WeightsMode::Args);
    }
}

#[test]
fn matmul_softmax_and_reductions_on_iree_cpu_and_vulkan() {
    for device in [Device::Cpu, Device::Vulkan] {
        check(
            MATMUL_SOFTMAX,
            &[&[1, 8, 6], &[3, 7, 8]],
            device,
            WeightsMode::Args,
        );
    }
}

#[test]
fn concat_slice_transpose_on_iree_cpu_and_vulkan() {
    for device in [Device::Cpu, Device::Vulkan] {
        check(
            CONCAT_SLICE,
            &[&[2, 9, 4], &[2, 9, 6]],
            device,
            WeightsMode::Args,
        );
    }
}

#[test]
fn embedded_weights_run_on_iree_cpu_and_vulkan() {
    for device in [Device::Cpu, Device::Vulkan] {
        check(ELEMENTWISE, &[&[8], &[1, 3, 8]], device, WeightsMode::Embed);
        check(
            MATMUL_SOFTMAX,
            &[&[1, 8, 6], &[2, 33, 8]],
            device,
            WeightsMode::Embed,
        );
    }
}
