//! The gradient engine behind `reformc train`: a placeholder until the
//! autodiff pass lands (the lead replaces this file at merge).

use crate::step::StepFn;
use reformc_frontend::spec::ModelSpec;
use reformc_tensor::Tensor;
use std::collections::BTreeMap;

/// One training step of a model: forward, loss and backward.
#[derive(Debug)]
pub struct ModelStep;

impl ModelStep {
    /// Prepares the step of `spec` for batches `[batch, seq_len]`, hashing
    /// with seeds derived from (`seed`, step). Not built yet: always an error.
    pub fn new(
        _spec: &ModelSpec,
        _seq_len: u64,
        _batch: u64,
        _seed: u64,
    ) -> Result<ModelStep, String> {
        Err("the gradient engine is not built yet".into())
    }
}

impl StepFn for ModelStep {
    fn step(
        &mut self,
        _weights: &BTreeMap<String, Tensor>,
        _ids: &Tensor,
        _step: u64,
    ) -> Result<(f64, BTreeMap<String, Tensor>), String> {
        Err("the gradient engine is not built yet".into())
    }
}
