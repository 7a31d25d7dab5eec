//! Model ops as tensor ops (the `lower-model` pass; this file is the
//! placeholder of the `lshdec` branch, which holds the attention
//! decompositions only).

mod chunked;
pub(crate) mod local;
pub(crate) mod lsh;

pub use chunked::lower_attention_node;
