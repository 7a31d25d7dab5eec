//! `.npy` input and output with errors that name the file, the expected and the found array.

use super::error::{CliError, CliResult};
use ndarray::{ArrayD, IxDyn};
use ndarray_npy::WriteNpyExt;
use reformc_runtime::npy::{self, NpyArray, NpyData};
use std::path::Path;

/// Reads through the runtime's bounded reader, so that `reformc run` and
/// compiled executables accept and refuse exactly the same files (Fortran
/// order included; no allocation beyond what the file holds).
fn read(path: &Path, what: &str) -> CliResult<NpyArray> {
    npy::read(path).map_err(|e| CliError::input(format!("{}: {what}: {e}", path.display())))
}

fn array<T>(path: &Path, shape: Vec<usize>, data: Vec<T>) -> CliResult<ArrayD<T>> {
    ArrayD::from_shape_vec(IxDyn(&shape), data)
        .map_err(|e| CliError::internal(format!("{}: shape {shape:?}: {e}", path.display())))
}

/// Reads an integer array (int64, or int32 widened), checking its rank.
pub fn read_int(path: &Path, rank: usize, what: &str) -> CliResult<ArrayD<i64>> {
    let a = read(path, what)?;
    let data = match a.data {
        NpyData::Int(v) if matches!(a.descr.as_str(), "<i8" | "<i4") => v,
        _ => {
            return Err(CliError::input(format!(
                "{}: {what}: expected an int64 or int32 array, found dtype {}",
                path.display(),
                a.descr
            )))
        }
    };
    if a.shape.len() != rank {
        return Err(CliError::input(format!(
            "{}: {what}: expected a rank-{rank} array, found shape {:?}",
            path.display(),
            a.shape
        )));
    }
    array(path, a.shape, data)
}

/// Reads a float32 array of an exact shape.
pub fn read_f32(path: &Path, shape: &[usize], what: &str) -> CliResult<ArrayD<f32>> {
    let a = read(path, what)?;
    let NpyData::F32(data) = a.data else {
        return Err(CliError::input(format!(
            "{}: {what}: expected a float32 array of shape {shape:?}, found dtype {}",
            path.display(),
            a.descr
        )));
    };
    if a.shape != shape {
        return Err(CliError::input(format!(
            "{}: {what}: expected shape {shape:?}, found {:?}",
            path.display(),
            a.shape
        )));
    }
    array(path, a.shape, data)
}

/// Reads a float array (f32 or f64) as f64, any shape: for comparisons.
pub fn read_float_any(path: &Path) -> CliResult<ArrayD<f64>> {
    let a = read(path, "reference output")?;
    let data = match a.data {
        NpyData::F32(v) => v.into_iter().map(f64::from).collect(),
        NpyData::F64(v) => v,
        NpyData::Int(_) => {
            return Err(CliError::input(format!(
                "{}: expected a float32 or float64 array, found dtype {}",
                path.display(),
                a.descr
            )))
        }
    };
    array(path, a.shape, data)
}

/// Writes an array atomically: a complete new file, or the old one untouched.
pub fn write<T: ndarray_npy::WritableElement>(path: &Path, a: &ArrayD<T>) -> CliResult<()> {
    reformc_ir::outfile::write_atomic(path, |w| a.write_npy(w).map_err(std::io::Error::other))
        .map_err(|e| CliError::internal(format!("{}: cannot write: {e}", path.display())))
}
