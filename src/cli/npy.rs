//! `.npy` input and output of the CLI: the readers and writer of
//! [`reformc_tensor::array`] (the bounded reader that compiled executables
//! use too), with their errors classified: a bad file is bad input (exit 2),
//! a failed write an internal failure (exit 1).

use super::error::{CliError, CliResult};
use ndarray::ArrayD;
use reformc_tensor::array;
use std::path::Path;

/// Reads an integer array (int64, or int32 widened), checking its rank.
pub fn read_int(path: &Path, rank: usize, what: &str) -> CliResult<ArrayD<i64>> {
    array::read_int(path, rank, what).map_err(CliError::input)
}

/// Reads a float32 array of an exact shape.
pub fn read_f32(path: &Path, shape: &[usize], what: &str) -> CliResult<ArrayD<f32>> {
    array::read_f32(path, shape, what).map_err(CliError::input)
}

/// Reads a float array (f32 or f64) as f64, any shape: for comparisons.
pub fn read_float_any(path: &Path) -> CliResult<ArrayD<f64>> {
    array::read_float_any(path).map_err(CliError::input)
}

/// Writes an array atomically: a complete new file, or the old one untouched.
pub fn write<T: ndarray_npy::WritableElement>(path: &Path, a: &ArrayD<T>) -> CliResult<()> {
    array::write(path, a).map_err(CliError::internal)
}
