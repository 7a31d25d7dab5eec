//! Index-driven tensor ops: gather, argmax, padding and truncation of an axis.

use super::Emitter;
use crate::MlirError;
use reformc_ir::ValueId;

impl Emitter<'_> {
    pub(super) fn gather(&mut self, v: ValueId) -> Result<String, MlirError> {
        Err(self.unsupported(v))
    }

    pub(super) fn argmax(&mut self, v: ValueId) -> Result<String, MlirError> {
        Err(self.unsupported(v))
    }

    pub(super) fn pad_to_multiple(&mut self, v: ValueId) -> Result<String, MlirError> {
        Err(self.unsupported(v))
    }

    pub(super) fn truncate(&mut self, v: ValueId) -> Result<String, MlirError> {
        Err(self.unsupported(v))
    }
}
