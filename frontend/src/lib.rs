pub mod config;
pub mod error;
pub mod hf_config;
pub mod lower;
pub mod schema;
pub mod spec;
pub mod weights;
