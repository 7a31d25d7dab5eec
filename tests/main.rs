//! One test executable for this crate's integration tests: each file below
//! is a module of it, so its dependencies are linked once instead of once per
//! file (with LLVM and MLIR linked statically, one executable per test file
//! made a clean build of the workspace's tests 20 GB). Run one file's tests
//! with a filter: `cargo test --test integration <file>::`.

mod common;
mod step_support;

mod c_abi_example;
mod cli_bf16;
mod cli_checkpoints;
mod cli_compile_train;
mod cli_errors;
mod cli_grad;
mod cli_heads;
mod cli_mlir;
mod cli_opt;
mod cli_outputs;
mod cli_readers;
mod cli_train;
mod cli_usability;
mod cli_values;
mod dropout;
mod filetests;
mod fuzz_parsers;
mod golden_hf;
mod gpu_fixtures;
mod grad_hf;
mod grad_jit;
mod hostile_sweep;
mod ir_roundtrip;
mod memory_rss;
mod mlir_fixtures;
mod mlir_iree;
mod model_variants;
mod random_models_exe;
mod train_checkpoint;
mod train_copy;
mod train_memory;
