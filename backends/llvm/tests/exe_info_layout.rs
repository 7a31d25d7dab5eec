//! The executable's model description is a constant struct that codegen
//! builds field by field (`__reformc_exe_info`) and the runtime reads as the
//! `#[repr(C)]` `ExeInfo`: their field offsets and sizes must agree, or the
//! executable reads garbage. This compares the LLVM struct's layout, under the
//! host target's data layout, with the Rust struct's.

use crate::common;

use common::{fixture, Case, CompileCase};
use inkwell::context::Context;
use inkwell::types::AnyTypeEnum;
use reformc_backend_llvm::{build_module, target, WeightsMode};
use reformc_exe_runtime::exe_main::ExeInfo as RtInfo;
use std::mem::{offset_of, size_of};

#[test]
fn generated_exe_info_has_the_runtime_struct_layout() {
    let case = Case::load(&fixture("causal_lsh_r1"));
    let ctx = Context::create();
    let info = case.exe_info(None);
    let cm = build_module(
        &ctx,
        &case.variants(),
        &case.options(None),
        &WeightsMode::Runtime,
        Some(&info),
    )
    .unwrap();
    let g = cm.module.get_global("__reformc_exe_info").unwrap();
    let AnyTypeEnum::StructType(st) = g.get_value_type() else {
        panic!("__reformc_exe_info is not a struct");
    };
    let tm = target::machine(&target::TargetSpec::host()).unwrap();
    let td = tm.get_target_data();
    let want = [
        offset_of!(RtInfo, abi_version),
        offset_of!(RtInfo, weights_embedded),
        offset_of!(RtInfo, run),
        offset_of!(RtInfo, load_weights),
        offset_of!(RtInfo, signature),
        offset_of!(RtInfo, last_error),
        offset_of!(RtInfo, default_weights),
        offset_of!(RtInfo, model_name),
        offset_of!(RtInfo, output_name),
        offset_of!(RtInfo, default_threads),
        offset_of!(RtInfo, vocab_size),
        offset_of!(RtInfo, max_len),
        offset_of!(RtInfo, pad_multiple),
        offset_of!(RtInfo, pad_min_len),
        offset_of!(RtInfo, n_lsh),
        offset_of!(RtInfo, heads),
        offset_of!(RtInfo, head_dim),
        offset_of!(RtInfo, rounds),
        offset_of!(RtInfo, rot_half),
        offset_of!(RtInfo, variants),
        offset_of!(RtInfo, n_buckets),
        offset_of!(RtInfo, train),
        offset_of!(RtInfo, causal),
        offset_of!(RtInfo, labels_index),
        offset_of!(RtInfo, output_names),
        offset_of!(RtInfo, step_seed),
    ];
    assert_eq!(
        st.count_fields() as usize,
        want.len(),
        "field count: generated {} vs runtime {}",
        st.count_fields(),
        want.len()
    );
    for (i, &w) in want.iter().enumerate() {
        let got = td.offset_of_element(&st, i as u32).unwrap();
        assert_eq!(
            got, w as u64,
            "field {i}: generated offset {got}, runtime offset {w}"
        );
    }
    assert_eq!(
        td.get_abi_size(&st),
        size_of::<RtInfo>() as u64,
        "struct size"
    );
}
