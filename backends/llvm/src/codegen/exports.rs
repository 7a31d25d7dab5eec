//! Prefixed exports (`compile --name PREFIX`): every exported function gets
//! `PREFIX_` in place of `reformc_`, so that several models link into one
//! program without one silently answering for another.

use super::*;

impl<'ctx> Gen<'ctx> {
    /// Renames the generated entry points and adds a forwarding function for
    /// each runtime export (tensor helpers, process settings), all prefixed.
    pub(crate) fn prefix_exports(&self, prefix: &str) -> Result<()> {
        for name in crate::aot::EXPORTS {
            let new = crate::abi::prefixed(name, prefix);
            match self.module.get_function(name) {
                Some(f) if f.count_basic_blocks() > 0 => f.as_global_value().set_name(&new),
                _ => self.forwarder(name, &new)?,
            }
        }
        Ok(())
    }

    /// Defines `new` with `target`'s type, calling `target` with its arguments.
    fn forwarder(&self, target: &str, new: &str) -> Result<()> {
        let callee = self.external(target)?;
        let f = self.define(new, callee.get_type(), Linkage::External);
        let args: Vec<BasicMetadataValueEnum> = f.get_param_iter().map(|p| p.into()).collect();
        let call = self.b.build_call(callee, &args, "r")?;
        match call.try_as_basic_value() {
            inkwell::values::ValueKind::Basic(v) => self.b.build_return(Some(&v))?,
            inkwell::values::ValueKind::Instruction(_) => self.b.build_return(None)?,
        };
        Ok(())
    }
}
