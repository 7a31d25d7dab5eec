//! The interface between the training loop and the gradient engine.

use reformc_tensor::Tensor;
use std::collections::BTreeMap;

/// One training step: the mean loss and the gradient of every weight (same
/// names, shapes and dtype as `weights`).
///
/// `ids` is an `i64` tensor `[B, L]`; the labels are the ids themselves (the
/// engine applies Hugging Face's shift for a causal LM head). `step` is the
/// 0-based step number: the engine derives its LSH hashing seed from (run
/// seed, step), so a resumed run hashes exactly as the uninterrupted one.
///
/// ```
/// use reformc_tensor::Tensor;
/// use reformc_train::StepFn;
/// use std::collections::BTreeMap;
/// /// Loss 0.5·Σw², whatever the batch.
/// struct Quadratic;
/// impl StepFn for Quadratic {
///     fn step(&mut self, w: &BTreeMap<String, Tensor>, _ids: &Tensor, _step: u64)
///         -> Result<(f64, BTreeMap<String, Tensor>), String> {
///         let a = w["w"].as_f32().unwrap();
///         Ok((0.5 * a.iter().map(|x| f64::from(x * x)).sum::<f64>(), w.clone()))
///     }
/// }
/// ```
pub trait StepFn {
    /// Runs the step; an error is a message naming what failed.
    fn step(
        &mut self,
        weights: &BTreeMap<String, Tensor>,
        ids: &Tensor,
        step: u64,
    ) -> Result<(f64, BTreeMap<String, Tensor>), String>;
}
