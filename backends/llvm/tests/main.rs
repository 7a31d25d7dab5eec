//! One test executable for this crate's integration tests: each file below
//! is a module of it, so its dependencies are linked once instead of once per
//! file (with LLVM and MLIR linked statically, one executable per test file
//! made a clean build of the workspace's tests 20 GB). Run one file's tests
//! with a filter: `cargo test --test integration <file>::`.

mod common;

mod artifacts;
mod backward_ops;
mod bf16;
mod exe_info_layout;
mod fixtures;
mod heads;
mod int_ops;
mod ops;
mod outline;
mod random_graphs;
mod random_models;
