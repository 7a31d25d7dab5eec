//! One test executable for this crate's integration tests: each file below
//! is a module of it, so its dependencies are linked once instead of once per
//! file (with LLVM and MLIR linked statically, one executable per test file
//! made a clean build of the workspace's tests 20 GB). Run one file's tests
//! with a filter: `cargo test --test integration <file>::`.

mod attn_support;
mod autodiff_support;
mod common;

mod autodiff_dropout;
mod autodiff_reversible;
mod autodiff_rules;
mod bounds;
mod chunk_fixtures;
mod cost_memory;
mod eqsat_fixtures;
mod fixtures;
mod fused_loss;
mod lower_attention;
mod lower_model;
mod reversible_fixtures;
mod rewrites;
mod shared_qk_example;
mod snapshots;
