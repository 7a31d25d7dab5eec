//! Model-level ops over activations: embeddings, layer norm, linear layers.

use super::Emitter;
use crate::MlirError;
use reformc_ir::ValueId;

impl Emitter<'_> {
    pub(super) fn embedding(&mut self, v: ValueId) -> Result<String, MlirError> {
        Err(self.unsupported(v))
    }

    pub(super) fn axial_pos_embedding(&mut self, v: ValueId) -> Result<String, MlirError> {
        Err(self.unsupported(v))
    }

    pub(super) fn layer_norm(&mut self, v: ValueId) -> Result<String, MlirError> {
        Err(self.unsupported(v))
    }

    pub(super) fn linear(&mut self, v: ValueId) -> Result<String, MlirError> {
        Err(self.unsupported(v))
    }
}
