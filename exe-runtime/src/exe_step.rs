//! The command line of training-step executables (`reformc compile --train`):
//! one step of `reformc grad` — the loss and the gradient of every weight.
//!
//! `./step --input IDS.npy [--labels L.npy] [--attention-mask M.npy]
//! [--lsh-rotations R.npy | --lsh-buckets K.npy | --seed N] --output
//! grads.safetensors [--loss-output loss.npy] [--threads N] [--weights W]`.
//! Inputs are read and checked as the forward executable does
//! ([`crate::exe_main`]); the labels default to the ids, `-100` marks an
//! ignored position, and a causal LM's labels are shifted here (position t
//! predicts label t+1) before the step graph sees them.

use crate::exe_main::{
    input_err, out_shape, prepare, print_profile, read_int, report_times, run_model, tensor,
    timed_runs, Args, ExeInfo, Fail, Prepared,
};
use crate::model_rt::{self, ReformcTensor};
use reformc_tensor::safetensors_write::{self, Blob};
use std::collections::BTreeMap;
use std::ffi::c_void;
use std::path::Path;
use std::time::Instant;

/// Label value of a position without a loss term (PyTorch's `ignore_index`).
pub const IGNORE: i64 = -100;

/// Prefix of the step graph's gradient outputs (`grad:<weight name>`).
const GRAD_PREFIX: &str = "grad:";

/// Name of the step graph's loss output.
const LOSS: &str = "loss";

/// The `--help` text of a step executable.
pub(crate) fn usage(prog: &str, model: &str) -> String {
    let lines = [
        format!("{prog}: one training step of the reformc-compiled model `{model}`"),
        String::new(),
        format!("usage: {prog} --input IDS.npy --output GRADS.safetensors [options]"),
        String::new(),
        "  --input PATH            token ids: int64 or int32 .npy [B, L]".into(),
        "  --labels PATH           int .npy [B, L], -100 = ignored (default: the token ids)".into(),
        "  --output PATH           where to write the gradients (.safetensors, float32, the weights' names)".into(),
        "  --loss-output PATH      also write the loss (0-d float64 .npy)".into(),
        "  --attention-mask PATH   int .npy [B, L], 0 = padding (default: all ones)".into(),
        "  --threads N             worker threads (0 = all cores)".into(),
        "  --lsh-rotations PATH    float32 .npy [n_lsh_layers, H, d, r, S/2] (HF's draws)".into(),
        "  --lsh-buckets PATH      int .npy [n_lsh_layers, B, H, r*L_padded] (recorded buckets)"
            .into(),
        "  --seed N                seed of the generator drawing LSH rotations (default 0)".into(),
        "  --weights PATH          safetensors weights (default: the file named at compile time)"
            .into(),
        "  --allow-nonfinite-weights  load weights holding NaN or Inf (a warning, not an error)"
            .into(),
        "  --weights-mode MODE     mmap (default) or read".into(),
        "  --time                  print timings to stderr".into(),
        crate::exe_main::REPEAT_HELP.into(),
        crate::exe_main::REPEAT_HELP_MORE.into(),
        "  --signature             print the step's JSON signature and exit".into(),
        "  --help                  this text".into(),
    ];
    let mut s = lines.join("\n");
    s.push('\n');
    s
}

/// `labels` (row-major `[b, l]`) aligned with the logits' positions: shifted
/// left by one for a causal LM (the last position gets [`IGNORE`]), as is
/// for a masked LM. The same rule as `reformc_train::labels::aligned`.
///
/// ```
/// use reformc_exe_runtime::exe_step::aligned;
/// assert_eq!(aligned(&[5, 6, 7, 1, 2, 3], [2, 3], true), vec![6, 7, -100, 2, 3, -100]);
/// assert_eq!(aligned(&[5, 6, 7], [1, 3], false), vec![5, 6, 7]);
/// ```
pub fn aligned(labels: &[i64], [b, l]: [usize; 2], causal: bool) -> Vec<i64> {
    if !causal {
        return labels.to_vec();
    }
    let mut out = Vec::with_capacity(b * l);
    for row in labels.chunks(l.max(1)).take(b) {
        out.extend_from_slice(&row[1.min(row.len())..]);
        out.push(IGNORE);
    }
    out
}

/// Reads `--labels`: int `[B, L]` of the ids' shape, each -100 or a token id.
fn read_labels(path: &Path, shape: &[usize], vocab: i64) -> Result<Vec<i64>, Fail> {
    let (s, l) = read_int(path, 2, "labels [B, L]")?;
    if s != shape {
        return Err(input_err(format!(
            "{}: labels: expected shape {shape:?} (that of the token ids), found {s:?}",
            path.display()
        )));
    }
    let bad = |v: i64| v != IGNORE && (v < 0 || (vocab > 0 && v >= vocab));
    if let Some((i, &v)) = l.iter().enumerate().find(|(_, &v)| bad(v)) {
        let len = shape[1].max(1);
        return Err(input_err(format!(
            "{}: label {v} at [{}, {}] is out of range (expected -100 or 0 <= label < {vocab})",
            path.display(),
            i / len,
            i % len
        )));
    }
    Ok(l)
}

/// The model's output slots; every filled tensor is released on drop.
struct Outputs(Vec<ReformcTensor>);

impl Drop for Outputs {
    fn drop(&mut self) {
        for t in &mut self.0 {
            // SAFETY: each slot is empty or was filled by reformc_model_run; released once.
            unsafe { model_rt::reformc_tensor_release(t) };
        }
    }
}

/// An output as little-endian bytes of its own float type.
fn blob(t: &ReformcTensor, name: &str) -> Result<Blob, Fail> {
    let shape = out_shape(t);
    let n: usize = shape.iter().product();
    let (dtype, size) = match t.dtype {
        1 => ("F32", 4),
        2 => ("F64", 8),
        other => {
            return Err(Fail(
                format!("output `{name}` has dtype code {other}, expected a float"),
                1,
            ))
        }
    };
    if n > 0 && t.data.is_null() {
        return Err(Fail(format!("output `{name}` has no data"), 1));
    }
    let bytes = if n == 0 {
        Vec::new()
    } else {
        // SAFETY: the model wrote n elements of `size` bytes at t.data.
        unsafe { std::slice::from_raw_parts(t.data as *const u8, n * size) }.to_vec()
    };
    Ok(Blob {
        dtype,
        shape: shape.iter().map(|&d| d as u64).collect(),
        bytes,
    })
}

/// The loss (first element of the `loss` output) as f64.
fn loss_value(b: &Blob) -> f64 {
    match b.dtype {
        "F64" => b
            .bytes
            .get(..8)
            .and_then(|x| x.try_into().ok())
            .map_or(f64::NAN, f64::from_le_bytes),
        _ => b
            .bytes
            .get(..4)
            .and_then(|x| x.try_into().ok())
            .map_or(f64::NAN, |x| f64::from(f32::from_le_bytes(x))),
    }
}

/// The step's inputs: the forward ones (with the seed before a replayed
/// hashing input when the step draws dropout masks), then the aligned
/// labels, last in every variant.
fn step_inputs(p: &Prepared, labels: &[i64], info: &ExeInfo) -> Result<Vec<ReformcTensor>, Fail> {
    let mut inputs = p.tensors(info.step_seed != 0);
    if info.labels_index < 0 {
        return Err(Fail("the step description has no `labels` input".into(), 1));
    }
    inputs.push(tensor(3, &p.ishape, labels.as_ptr() as *const c_void));
    Ok(inputs)
}

/// Runs one training step from the parsed command line.
pub(crate) fn run(prog: &str, args: &Args, info: &ExeInfo, t_start: Instant) -> Result<(), Fail> {
    let output = args
        .output
        .clone()
        .ok_or_else(|| input_err("--output GRADS.safetensors is required (see --help)"))?;
    let mut outs: Vec<(&str, &Path)> = vec![("--output", &output)];
    if let Some(l) = &args.loss_output {
        if reformc_tensor::outfile::same_file(l, &output) || l == &output {
            return Err(input_err(format!(
                "--loss-output `{}` is the same file as --output: name two files",
                l.display()
            )));
        }
        outs.push(("--loss-output", l));
    }
    let p = prepare(args, info, &outs)?;
    let [b, l] = [p.ishape[0], p.ishape[1]];
    let labels = match &args.labels {
        Some(path) => read_labels(path, &p.ishape, info.vocab_size)?,
        None => p.ids.clone(),
    };
    let labels = aligned(&labels, [b, l], info.causal != 0);
    let inputs = step_inputs(&p, &labels, info)?;
    let names: Vec<String> = crate::exe_main::c_text(info.output_names)
        .split('\n')
        .map(str::to_string)
        .collect();
    let empty = || Outputs((0..names.len()).map(|_| ReformcTensor::empty()).collect());
    let mut out = empty();
    let runs = timed_runs(args, |last| {
        if last {
            return run_model(info, &inputs, &mut out.0);
        }
        let mut spare = empty();
        run_model(info, &inputs, &mut spare.0)
    })?;
    let t_write = Instant::now();
    let mut loss = None;
    let mut grads = BTreeMap::new();
    for (name, t) in names.iter().zip(&out.0) {
        let blob = blob(t, name)?;
        if name == LOSS {
            loss = Some(loss_value(&blob));
        } else if let Some(w) = name.strip_prefix(GRAD_PREFIX) {
            grads.insert(w.to_string(), blob);
        }
    }
    drop(out);
    let loss = loss.ok_or_else(|| Fail("the step has no `loss` output".into(), 1))?;
    safetensors_write::write(&output, &grads, &BTreeMap::new()).map_err(|e| Fail(e, 1))?;
    if let Some(path) = &args.loss_output {
        let bytes = reformc_tensor::npy::to_bytes_f64(&[], &[loss]);
        reformc_tensor::npy::write(path, &bytes)
            .map_err(|e| Fail(format!("{}: {e}", path.display()), 1))?;
    }
    let write_time = t_write.elapsed();
    println!(
        "{prog}: loss {loss:.10} ; wrote {} gradients to {}",
        grads.len(),
        output.display()
    );
    if args.time {
        report_times(&p, &runs, write_time, t_start);
    }
    print_profile();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causal_shift_moves_each_row_left_and_ignores_the_last_position() {
        let l = [1, 2, 3, 4, 5, 6];
        assert_eq!(aligned(&l, [3, 2], true), vec![2, -100, 4, -100, 6, -100]);
        assert_eq!(aligned(&l, [1, 6], true), vec![2, 3, 4, 5, 6, -100]);
        assert_eq!(aligned(&[7], [1, 1], true), vec![-100]);
        assert_eq!(aligned(&l, [2, 3], false), l.to_vec());
    }

    #[test]
    fn labels_of_the_wrong_shape_or_range_are_refused() {
        let dir = std::env::temp_dir().join(format!("reformc_exe_step_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("labels.npy");
        std::fs::write(
            &p,
            reformc_tensor::npy::to_bytes_i64(&[1, 3], &[0, -100, 9]),
        )
        .unwrap();
        assert!(read_labels(&p, &[1, 3], 10).is_ok());
        let Fail(m, code) = read_labels(&p, &[1, 3], 9).err().unwrap();
        assert_eq!(code, 2);
        assert!(m.contains("label 9 at [0, 2] is out of range"), "{m}");
        let Fail(m, _) = read_labels(&p, &[3, 1], 10).err().unwrap();
        assert!(m.contains("expected shape [3, 1]"), "{m}");
        std::fs::write(&p, reformc_tensor::npy::to_bytes_i64(&[3], &[0, 1, 2])).unwrap();
        let Fail(m, _) = read_labels(&p, &[1, 3], 10).err().unwrap();
        assert!(m.contains("rank-2"), "{m}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
