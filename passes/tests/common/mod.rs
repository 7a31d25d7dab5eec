//! The shared fixture helpers (`reformc-testkit`).

#![allow(unused_imports)]

pub use reformc_testkit::*;
