//! One test binary for this crate's integration tests: each file below is a
//! module of it, so the suite links LLVM and MLIR once instead of once per
//! file (a clean build of the workspace's tests was 20 GB of mostly
//! identical executables). Run one file's tests with a filter:
//! `cargo test --test integration <file>::`.

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
