//! Training for reformc, everything but the gradient itself: the interface
//! to the gradient engine ([`step::StepFn`]), the token stream and its
//! reproducible windows ([`data`]), the optimizers ([`optim`]), single-file
//! checkpoints with exact resume ([`checkpoint`]), the loop ([`run`]) and
//! the set-up of a run that `reformc train` and `reformc.train` share
//! ([`setup`]).
//!
//! Every random choice is a pure function of (run seed, step), so a run
//! resumed from a checkpoint of step N continues exactly as the
//! uninterrupted run would have: the checkpoint holds the weights, the
//! optimizer state and N, and nothing else is needed.
#![deny(missing_docs)]

pub mod checkpoint;
pub mod data;
pub mod grad;
pub mod labels;
pub mod optim;
pub mod run;
pub mod setup;
pub mod step;

pub use step::StepFn;
