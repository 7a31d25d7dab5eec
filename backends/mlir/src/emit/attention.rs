//! Full (dense or key-chunked streaming) and local attention.

use super::Emitter;
use crate::MlirError;
use reformc_ir::ValueId;

impl Emitter<'_> {
    pub(super) fn attention(&mut self, v: ValueId) -> Result<String, MlirError> {
        Err(self.unsupported(v))
    }

    pub(super) fn local_attention(&mut self, v: ValueId) -> Result<String, MlirError> {
        Err(self.unsupported(v))
    }
}
