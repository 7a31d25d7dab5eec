//! reformc's typed tensor IR.
//!
//! An SSA dataflow graph whose values are typed by a dtype and a shape of
//! symbolic dimensions, with ops at two levels (model ops such as
//! `lsh_attention`, tensor ops such as `matmul`), a text format that prints
//! and parses back identically, a verifier and a Graphviz export.
//!
//! ```
//! use reformc_ir::{parse, print, verify};
//! let text = "graph {\n  %0 = input {name=\"x\"} : f32[B,L,8]\n  %1 = softmax %0 {axis=2} : f32[B,L,8]\n  output \"y\" = %1\n}\n";
//! let g = parse(text).unwrap();
//! verify(&g).unwrap();
//! assert_eq!(print(&g), text);
//! ```

#![deny(missing_docs)]

mod activation;
mod attr;
mod dim;
mod dot;
mod facts;
mod graph;
pub mod hf_rules;
mod infer;
mod layer;
mod op;
mod parse;
mod print;
mod reduction;
mod rewriter;
pub mod scoped;
mod types;
mod verify;

pub use activation::Activation;
pub use attr::{Attr, Attrs};
pub use dim::{Dim, DimEnv};
pub use dot::{to_dot, to_petgraph};
pub use facts::{BinaryFn, CostClass, Elementwise, OpFacts, ResultBuffer, Rows, UnaryFn};
pub use graph::{Graph, Node, Region, ValueId};
pub use infer::{check_type, infer_type, FEED_FORWARD_MIN_BLOCK_ROWS, FEED_FORWARD_OPERANDS};
pub use layer::{layer_of, LAYER};
pub use op::{AttrSpec, AttrType, Op, OpKind, OpLevel, OpSchema};
pub use parse::{parse, ParseError};
pub use print::print;
pub use reduction::Reduction;
pub use reformc_tensor::{outfile, DType};
pub use rewriter::{BlockId, RewriteError, Rewriter, Use, UseLists};
pub use types::TensorType;
pub use verify::{verify, VerifyError};
