//! reformc's frontend: reads a model's configuration and weights and lowers
//! the model to reformc's IR.
//!
//! A configuration is either a Hugging Face Reformer `config.json`
//! ([`hf_config`]) or reformc's own model schema ([`schema`]); [`config`]
//! detects which and both parse into one resolved [`spec::ModelSpec`].
//! [`weights`] opens `.safetensors` files and checks them against the tensors
//! a spec needs, and [`lower`] turns a spec into an IR graph whose weights are
//! named graph inputs. Every failure is a one-line [`error::FrontendError`].
#![deny(missing_docs)]

pub mod checkpoint;
pub mod config;
pub mod error;
pub mod half;
pub mod hf_config;
pub mod inputs;
pub mod limits;
pub mod lower;
pub mod schema;
pub mod spec;
pub mod weights;
