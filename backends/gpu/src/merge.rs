//! One kernel module: `gpu-kernel-outlining` puts each kernel in its own
//! `gpu.module` (`@forward_kernel_N::@forward_kernel`); reformc moves them all
//! into one, `@kernels`, each kernel named after the module it came from, so
//! that the PTX is one file with one `.entry` per kernel, loaded once.

use crate::GpuError;
use melior::{
    ir::{
        attribute::StringAttribute,
        block::BlockLike,
        operation::{OperationLike, OperationMutLike, OperationRefMut, WalkOrder, WalkResult},
        Attribute, Module, Operation, RegionLike,
    },
    Context,
};

/// The merged module's symbol.
pub const KERNELS: &str = "kernels";

/// Merges every `gpu.module` of `module` into the first, renamed
/// [`KERNELS`], and points every `gpu.launch_func` at its kernel's new name.
/// Returns the kernels' names in launch order of definition.
pub(crate) fn merge_kernels(
    context: &Context,
    module: &mut Module,
) -> Result<Vec<String>, GpuError> {
    let body = module.body();
    let mut gpu_modules = Vec::new();
    let mut op = body.first_operation();
    while let Some(o) = op {
        if o.name().as_string_ref().as_str() == Ok("gpu.module") {
            gpu_modules.push(o);
        }
        op = o.next_in_block();
    }
    let Some(&first) = gpu_modules.first() else {
        return Ok(Vec::new());
    };
    let first_block = first
        .region(0)
        .ok()
        .and_then(|r| r.first_block())
        .ok_or_else(|| GpuError::Lowering("an outlined gpu.module has no body".into()))?;
    let mut names = Vec::new();
    for m in &gpu_modules {
        let name = symbol_name(m)?;
        let func = m
            .region(0)
            .ok()
            .and_then(|r| r.first_block())
            .and_then(|b| b.first_operation())
            .ok_or_else(|| GpuError::Lowering(format!("gpu.module @{name} holds no kernel")))?;
        // SAFETY: `func` is a live op of this module; the mutable handle is
        // used only while no other reference to it is in use.
        let mut f = unsafe { OperationRefMut::from_raw(func.to_raw()) };
        f.set_attribute("sym_name", StringAttribute::new(context, &name).into());
        if m.to_raw().ptr != first.to_raw().ptr {
            match first_block.first_operation() {
                Some(_) => {
                    let last = last_op(&first_block).expect("the block has an op");
                    f.move_after(last);
                }
                None => unreachable!("the first module keeps its kernel"),
            }
        }
        names.push(name);
    }
    for m in gpu_modules.iter().skip(1) {
        // SAFETY: the module is empty now and nothing refers to it; removed
        // from its block, it is owned here and destroyed when dropped.
        unsafe {
            let mut r = OperationRefMut::from_raw(m.to_raw());
            r.remove_from_parent();
            drop(Operation::from_raw(m.to_raw()));
        }
    }
    // SAFETY: as above, the first module is live and not otherwise borrowed.
    let mut first = unsafe { OperationRefMut::from_raw(first.to_raw()) };
    first.set_attribute("sym_name", StringAttribute::new(context, KERNELS).into());
    retarget_launches(context, module)?;
    Ok(names)
}

fn last_op<'c, 'a>(
    block: &melior::ir::BlockRef<'c, 'a>,
) -> Option<melior::ir::operation::OperationRef<'c, 'a>> {
    let mut op = block.first_operation()?;
    while let Some(next) = op.next_in_block() {
        op = next;
    }
    Some(op)
}

fn symbol_name<'c: 'a, 'a>(op: &impl OperationLike<'c, 'a>) -> Result<String, GpuError> {
    let a = op
        .attribute("sym_name")
        .map_err(|_| GpuError::Lowering("a gpu.module has no name".into()))?;
    let s = a.to_string();
    Ok(s.trim_matches('"').to_string())
}

/// `@forward_kernel_3::@forward_kernel` → `@kernels::@forward_kernel_3`.
fn retarget_launches(context: &Context, module: &mut Module) -> Result<(), GpuError> {
    let mut launches = Vec::new();
    module.as_operation().walk(WalkOrder::PreOrder, |op| {
        if op.name().as_string_ref().as_str() == Ok("gpu.launch_func") {
            let old = op
                .attribute("kernel")
                .map(|a| a.to_string())
                .unwrap_or_default();
            launches.push((op.to_raw(), old));
        }
        WalkResult::Advance
    });
    for (raw, old) in launches {
        let module_name = old.split("::").next().unwrap_or("").trim_start_matches('@');
        let attr = Attribute::parse(context, &format!("@{KERNELS}::@{module_name}"))
            .filter(|_| !module_name.is_empty())
            .ok_or_else(|| {
                GpuError::Lowering(format!(
                    "a gpu.launch_func names kernel `{old}`, which is not @module::@kernel"
                ))
            })?;
        // SAFETY: `raw` is a launch op of `module`, alive (nothing was erased
        // since the walk) and not otherwise borrowed.
        let mut op = unsafe { OperationRefMut::from_raw(raw) };
        op.set_attribute("kernel", attr);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::{compile_ptx, find_libdevice, GpuOptions};

    #[test]
    fn every_kernel_lands_in_one_ptx_module() {
        // Three element-wise ops with a consumer each: three kernels.
        let g = reformc_ir::parse(
            "graph {\n  %0 = input {name=\"x\"} : f32[N,4]\n  %1 = add %0, %0 : f32[N,4]\n  %2 = mul %1, %0 : f32[N,4]\n  %3 = sub %2, %1 : f32[N,4]\n  output \"y\" = %3\n}\n",
        )
        .unwrap();
        let text = reformc_backend_mlir::emit_module(&g, &Default::default()).unwrap();
        let opts = GpuOptions {
            libdevice: find_libdevice(None).unwrap(),
            ..GpuOptions::default()
        };
        let k = compile_ptx(&text, &opts).unwrap();
        assert_eq!(k.ptx.matches(".version").count(), 1, "{}", k.ptx);
        assert!(k.entries.len() >= 3, "{:?}", k.entries);
        let mut names = k.entries.clone();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), k.entries.len(), "entry names are distinct");
    }
}
