//! One test binary for this crate's integration tests: each file below is a
//! module of it, so the suite links LLVM and MLIR once instead of once per
//! file (a clean build of the workspace's tests was 20 GB of mostly
//! identical executables). Run one file's tests with a filter:
//! `cargo test --test integration <file>::`.

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
