//! `.npy` files as ndarray arrays: the CLI's inputs, reference outputs and
//! outputs. Reading goes through the bounded reader of [`crate::npy`], so
//! that `reformc run` and compiled executables accept and refuse exactly the
//! same files (Fortran order included; no allocation beyond what the file
//! holds). Errors name the file, what it was for, and what was expected and
//! found.

use crate::npy::{self, NpyArray, NpyData};
use ndarray::{ArrayD, IxDyn};
use ndarray_npy::WriteNpyExt;
use std::path::Path;

fn read(path: &Path, what: &str) -> Result<NpyArray, String> {
    npy::read(path).map_err(|e| format!("{}: {what}: {e}", path.display()))
}

fn array<T>(path: &Path, shape: Vec<usize>, data: Vec<T>) -> Result<ArrayD<T>, String> {
    // The reader checked the element count against the shape: never fails.
    ArrayD::from_shape_vec(IxDyn(&shape), data)
        .map_err(|e| format!("{}: shape {shape:?}: {e}", path.display()))
}

/// Reads an integer array (int64, or int32 widened) of rank `rank`; `what`
/// says what the file is for, in errors.
///
/// ```
/// let p = std::env::temp_dir().join(format!("rc_array_doc_{}.npy", std::process::id()));
/// reformc_tensor::npy::write(&p, &reformc_tensor::npy::to_bytes_i64(&[1, 2], &[7, 8])).unwrap();
/// let a = reformc_tensor::array::read_int(&p, 2, "input_ids").unwrap();
/// assert_eq!(a.as_slice().unwrap(), &[7, 8]);
/// let e = reformc_tensor::array::read_int(&p, 1, "input_ids").unwrap_err();
/// assert!(e.contains("expected a rank-1 array, found shape [1, 2]"), "{e}");
/// # std::fs::remove_file(p).ok();
/// ```
pub fn read_int(path: &Path, rank: usize, what: &str) -> Result<ArrayD<i64>, String> {
    let a = read(path, what)?;
    let data = match a.data {
        NpyData::Int(v) if matches!(a.descr.as_str(), "<i8" | "<i4") => v,
        _ => {
            return Err(format!(
                "{}: {what}: expected an int64 or int32 array, found dtype {}",
                path.display(),
                a.descr
            ))
        }
    };
    if a.shape.len() != rank {
        return Err(format!(
            "{}: {what}: expected a rank-{rank} array, found shape {:?}",
            path.display(),
            a.shape
        ));
    }
    array(path, a.shape, data)
}

/// Reads a float32 array of exactly `shape`.
pub fn read_f32(path: &Path, shape: &[usize], what: &str) -> Result<ArrayD<f32>, String> {
    let a = read(path, what)?;
    let NpyData::F32(data) = a.data else {
        return Err(format!(
            "{}: {what}: expected a float32 array of shape {shape:?}, found dtype {}",
            path.display(),
            a.descr
        ));
    };
    if a.shape != shape {
        return Err(format!(
            "{}: {what}: expected shape {shape:?}, found {:?}",
            path.display(),
            a.shape
        ));
    }
    array(path, a.shape, data)
}

/// Reads a float array (f32 or f64) of any shape as f64: for comparisons.
pub fn read_float_any(path: &Path) -> Result<ArrayD<f64>, String> {
    let a = read(path, "reference output")?;
    let data = match a.data {
        NpyData::F32(v) => v.into_iter().map(f64::from).collect(),
        NpyData::F64(v) => v,
        NpyData::Int(_) => {
            return Err(format!(
                "{}: expected a float32 or float64 array, found dtype {}",
                path.display(),
                a.descr
            ))
        }
    };
    array(path, a.shape, data)
}

/// Writes an array atomically: a complete new file, or the old one untouched.
///
/// ```
/// use ndarray::{ArrayD, IxDyn};
/// let p = std::env::temp_dir().join(format!("rc_array_write_{}.npy", std::process::id()));
/// let a = ArrayD::from_shape_vec(IxDyn(&[2]), vec![1.5f32, -2.0]).unwrap();
/// reformc_tensor::array::write(&p, &a).unwrap();
/// assert_eq!(reformc_tensor::array::read_f32(&p, &[2], "x").unwrap(), a);
/// # std::fs::remove_file(p).ok();
/// ```
pub fn write<T: ndarray_npy::WritableElement>(path: &Path, a: &ArrayD<T>) -> Result<(), String> {
    crate::outfile::write_atomic(path, |w| a.write_npy(w).map_err(std::io::Error::other))
        .map_err(|e| format!("{}: cannot write: {e}", path.display()))
}
