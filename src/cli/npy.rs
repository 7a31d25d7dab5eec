//! `.npy` input and output with errors that name the file, the expected and the found array.

use super::error::{CliError, CliResult};
use ndarray::ArrayD;
use ndarray_npy::{ReadNpyError, ReadNpyExt, WriteNpyExt};
use std::fs::File;
use std::path::Path;

fn open(path: &Path) -> CliResult<File> {
    File::open(path).map_err(|e| CliError::input(format!("{}: cannot open: {e}", path.display())))
}

fn describe(e: &ReadNpyError) -> String {
    match e {
        ReadNpyError::WrongDescriptor(d) => format!("dtype descriptor {d}"),
        other => other.to_string(),
    }
}

/// Reads an integer array (int64, or int32 widened), checking its rank.
pub fn read_int(path: &Path, rank: usize, what: &str) -> CliResult<ArrayD<i64>> {
    let a = match ArrayD::<i64>::read_npy(open(path)?) {
        Ok(a) => a,
        Err(ReadNpyError::WrongDescriptor(_)) => match ArrayD::<i32>::read_npy(open(path)?) {
            Ok(a) => a.mapv(i64::from),
            Err(e) => {
                return Err(CliError::input(format!(
                    "{}: {what}: expected an int64 or int32 array, found {}",
                    path.display(),
                    describe(&e)
                )))
            }
        },
        Err(e) => {
            return Err(CliError::input(format!(
                "{}: {what}: not a readable .npy file: {e}",
                path.display()
            )))
        }
    };
    if a.ndim() != rank {
        return Err(CliError::input(format!(
            "{}: {what}: expected a rank-{rank} array, found shape {:?}",
            path.display(),
            a.shape()
        )));
    }
    Ok(a)
}

/// Reads a float32 array of an exact shape.
pub fn read_f32(path: &Path, shape: &[usize], what: &str) -> CliResult<ArrayD<f32>> {
    let a = ArrayD::<f32>::read_npy(open(path)?).map_err(|e| {
        CliError::input(format!(
            "{}: {what}: expected a float32 array of shape {shape:?}, found {}",
            path.display(),
            describe(&e)
        ))
    })?;
    if a.shape() != shape {
        return Err(CliError::input(format!(
            "{}: {what}: expected shape {shape:?}, found {:?}",
            path.display(),
            a.shape()
        )));
    }
    Ok(a)
}

/// Reads a float array (f32 or f64) as f64, any shape: for comparisons.
pub fn read_float_any(path: &Path) -> CliResult<ArrayD<f64>> {
    match ArrayD::<f64>::read_npy(open(path)?) {
        Ok(a) => Ok(a),
        Err(ReadNpyError::WrongDescriptor(_)) => ArrayD::<f32>::read_npy(open(path)?)
            .map(|a| a.mapv(f64::from))
            .map_err(|e| {
                CliError::input(format!(
                    "{}: expected a float32 or float64 array, found {}",
                    path.display(),
                    describe(&e)
                ))
            }),
        Err(e) => Err(CliError::input(format!(
            "{}: not a readable .npy file: {e}",
            path.display()
        ))),
    }
}

/// Writes an array atomically: a complete new file, or the old one untouched.
pub fn write<T: ndarray_npy::WritableElement>(path: &Path, a: &ArrayD<T>) -> CliResult<()> {
    reformc_ir::outfile::write_atomic(path, |w| a.write_npy(w).map_err(std::io::Error::other))
        .map_err(|e| CliError::internal(format!("{}: cannot write: {e}", path.display())))
}
