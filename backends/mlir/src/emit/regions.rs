//! Ops with regions: reversible blocks (inlined) and sequence chunking (a loop).

use super::Emitter;
use crate::MlirError;
use reformc_ir::ValueId;

impl Emitter<'_> {
    pub(super) fn reversible_block(&mut self, v: ValueId) -> Result<String, MlirError> {
        Err(self.unsupported(v))
    }

    pub(super) fn seq_chunk(&mut self, v: ValueId) -> Result<String, MlirError> {
        Err(self.unsupported(v))
    }
}
