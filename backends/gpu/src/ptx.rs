//! The PTX of the merged kernel module, read out of the `gpu.binary` op that
//! `gpu-module-to-binary{format=isa}` leaves in the lowered module.

use crate::GpuError;
use melior::ir::{
    attribute::ArrayAttribute, attribute::AttributeLike, block::BlockLike,
    operation::OperationLike, Module,
};

/// The PTX text of the module's one `gpu.binary`, or an empty string when the
/// model launched no kernel.
pub(crate) fn extract(module: &Module) -> Result<String, GpuError> {
    let mut op = module.body().first_operation();
    while let Some(o) = op {
        if o.name().as_string_ref().as_str() == Ok("gpu.binary") {
            let objects = o
                .attribute("objects")
                .ok()
                .and_then(|a| ArrayAttribute::try_from(a).ok())
                .ok_or_else(|| GpuError::Lowering("gpu.binary has no objects".into()))?;
            let object = objects
                .element(0)
                .map_err(|_| GpuError::Lowering("gpu.binary holds no object".into()))?;
            // SAFETY: `object` is a `#gpu.object` attribute (the only kind a
            // gpu.binary's `objects` holds); the returned string is owned by
            // the attribute, which the context keeps alive while it is copied.
            let text = unsafe {
                let s = mlir_sys::mlirGPUObjectAttrGetObject(object.to_raw());
                let bytes = std::slice::from_raw_parts(s.data.cast::<u8>(), s.length);
                String::from_utf8_lossy(bytes).into_owned()
            };
            return Ok(text.trim_end_matches('\0').to_string());
        }
        op = o.next_in_block();
    }
    Ok(String::new())
}

/// The names of the `.entry` functions of `ptx`, in order.
///
/// ```
/// let ptx = ".visible .entry k0(\n.param .u64 a\n)\n{\n}\n.visible .entry k1()\n{\n}\n";
/// assert_eq!(reformc_backend_gpu::entries(ptx), vec!["k0", "k1"]);
/// ```
pub fn entries(ptx: &str) -> Vec<String> {
    ptx.lines()
        .filter_map(|l| l.trim_start().strip_prefix(".visible .entry "))
        .map(|rest| rest.split(['(', ' ']).next().unwrap_or("").to_string())
        .collect()
}

/// The libdevice functions `ptx` calls but does not define (`__nv_expf`, ...):
/// empty when libdevice was linked or nothing needs it.
pub(crate) fn unresolved_math(ptx: &str) -> Vec<String> {
    let mut v: Vec<String> = ptx
        .lines()
        .filter(|l| l.starts_with(".extern .func"))
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("__nv_")))
        .map(|w| w.trim_end_matches(['(', ';']).to_string())
        .collect();
    v.sort();
    v.dedup();
    v
}
