//! One test executable for this crate's integration tests: each file below
//! is a module of it, so its dependencies are linked once instead of once per
//! file (with LLVM and MLIR linked statically, one executable per test file
//! made a clean build of the workspace's tests 20 GB). Run one file's tests
//! with a filter: `cargo test --test integration <file>::`.

mod common;

mod emit;
mod interface;
mod jit;
mod jit_attention;
mod jit_backward;
mod jit_hash;
mod jit_lsh;
mod jit_model;
mod random_graphs;
mod random_models;
