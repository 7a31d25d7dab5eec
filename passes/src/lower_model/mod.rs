//! Model ops as tensor ops (the `lower-model` pass; this file is the
//! placeholder of the `lshdec` branch, which holds the attention
//! decompositions only).

mod build;
pub(crate) mod local;
pub(crate) mod lsh;

pub use build::lower_attention_node;
