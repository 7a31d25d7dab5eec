//! `random_normal`: Philox counter-based samples, keyed like the CPU backend.

use super::Emitter;
use crate::MlirError;
use reformc_ir::ValueId;

impl Emitter<'_> {
    pub(super) fn random_normal(&mut self, v: ValueId) -> Result<String, MlirError> {
        Err(self.unsupported(v))
    }
}
