//! The token stream of `reformc train --data` and its reproducible windows.
//!
//! A batch is `B` windows of `L` consecutive tokens whose starts are drawn
//! from Philox keyed by the run seed, with the step and the window index in
//! the counter: the batch of step `s` is a pure function of (seed, s), so a
//! resumed run needs nothing but the step to see the same data.

use ndarray::{Array2, ArrayD};
use reformc_interp::philox::philox4x32;
use reformc_tensor::npy::{self, NpyData};
use reformc_tensor::Tensor;
use std::path::Path;

/// Philox counter word that separates window draws from any other use of the run seed.
const WINDOW_STREAM: u32 = 0x7769_6e64; // "wind"

/// A 1-D stream of token ids, each in `[0, vocab)`.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenStream {
    tokens: Vec<i64>,
}

impl TokenStream {
    /// Reads `path`: a 1-D `.npy` of any integer dtype the reader knows
    /// (`int64`, `int32`, `int16`, `int8`, `uint8`), checking every id
    /// against `vocab`.
    pub fn read(path: &Path, vocab: u64) -> Result<TokenStream, String> {
        TokenStream::read_as(path, vocab, "--data")
    }

    /// [`TokenStream::read`], naming the file's argument `arg` in messages
    /// (`path: --data: ...` on the command line, `path: data: ...` in Python).
    pub fn read_as(path: &Path, vocab: u64, arg: &str) -> Result<TokenStream, String> {
        let fail = |m: String| format!("{}: {arg}: {m}", path.display());
        let a = npy::read(path).map_err(fail)?;
        let NpyData::Int(tokens) = a.data else {
            return Err(fail(format!(
                "expected a 1-D integer array of token ids, found dtype {}",
                a.descr
            )));
        };
        if a.shape.len() != 1 {
            return Err(fail(format!(
                "expected a 1-D array of token ids, found shape {:?}",
                a.shape
            )));
        }
        TokenStream::new(tokens, vocab).map_err(fail)
    }

    /// A stream from ids already in memory, checked against `vocab`.
    ///
    /// ```
    /// use reformc_train::data::TokenStream;
    /// assert!(TokenStream::new(vec![0, 3, 1], 4).is_ok());
    /// let e = TokenStream::new(vec![0, 4], 4).unwrap_err();
    /// assert_eq!(e, "token id 4 at index 1 is outside [0, 4) (the model's vocab_size)");
    /// ```
    pub fn new(tokens: Vec<i64>, vocab: u64) -> Result<TokenStream, String> {
        let bad = tokens
            .iter()
            .enumerate()
            .find(|(_, &t)| t < 0 || t as u64 >= vocab);
        if let Some((i, t)) = bad {
            return Err(format!(
                "token id {t} at index {i} is outside [0, {vocab}) (the model's vocab_size)"
            ));
        }
        Ok(TokenStream { tokens })
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether the stream has no tokens.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Refuses a stream shorter than one window of `seq_len` tokens.
    pub fn check_window(&self, seq_len: usize) -> Result<(), String> {
        if seq_len == 0 || self.len() < seq_len {
            return Err(format!(
                "{} tokens is shorter than one window of --seq-len {seq_len}",
                self.len()
            ));
        }
        Ok(())
    }

    /// The start offsets of the `batch` windows of step `step`, each in
    /// `0..=len-seq_len`. The stream must hold one window ([`TokenStream::check_window`]).
    pub fn window_starts(&self, seed: u64, step: u64, batch: usize, seq_len: usize) -> Vec<usize> {
        let choices = (self.len() - seq_len + 1) as u128;
        let key = [seed as u32, (seed >> 32) as u32];
        (0..batch)
            .map(|b| {
                let r = philox4x32(
                    [b as u32, step as u32, (step >> 32) as u32, WINDOW_STREAM],
                    key,
                );
                let x = u64::from(r[0]) | (u64::from(r[1]) << 32);
                // Multiply-shift maps 64 random bits onto 0..choices with a
                // bias below choices / 2^64.
                ((u128::from(x) * choices) >> 64) as usize
            })
            .collect()
    }

    /// The ids of step `step`: an `i64` tensor `[batch, seq_len]`.
    ///
    /// ```
    /// use reformc_train::data::TokenStream;
    /// let s = TokenStream::new((0..100).map(|i| i % 7).collect(), 7).unwrap();
    /// let a = s.batch(42, 3, 2, 5);
    /// assert_eq!(a, s.batch(42, 3, 2, 5));
    /// assert_eq!(a.shape(), &[2, 5]);
    /// ```
    pub fn batch(&self, seed: u64, step: u64, batch: usize, seq_len: usize) -> Tensor {
        let starts = self.window_starts(seed, step, batch, seq_len);
        let a = Array2::from_shape_fn((batch, seq_len), |(b, i)| self.tokens[starts[b] + i]);
        Tensor::I64(ArrayD::from(a.into_dyn()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(n: usize) -> TokenStream {
        TokenStream::new((0..n as i64).collect(), n as u64).unwrap()
    }

    #[test]
    fn windows_are_consecutive_tokens_in_range() {
        let s = stream(50);
        for step in 0..20 {
            let t = s.batch(9, step, 4, 10);
            let a = t.to_i64();
            for b in 0..4 {
                let first = a[[b, 0]];
                assert!((0..=40).contains(&first));
                for i in 0..10 {
                    assert_eq!(a[[b, i]], first + i as i64);
                }
            }
        }
    }

    #[test]
    fn draws_depend_on_seed_and_step_only() {
        let s = stream(1000);
        assert_eq!(s.window_starts(1, 5, 8, 10), s.window_starts(1, 5, 8, 10));
        assert_ne!(s.window_starts(1, 5, 8, 10), s.window_starts(1, 6, 8, 10));
        assert_ne!(s.window_starts(1, 5, 8, 10), s.window_starts(2, 5, 8, 10));
        // A larger batch extends the smaller one: window b depends on b alone.
        assert_eq!(
            s.window_starts(1, 5, 8, 10)[..4],
            s.window_starts(1, 5, 4, 10)
        );
    }

    #[test]
    fn every_start_is_reachable() {
        // A window exactly as long as the stream has one start; a stream one
        // longer has two, and both come up.
        let s = stream(11);
        assert!(s.window_starts(3, 0, 16, 11).iter().all(|&x| x == 0));
        let starts: std::collections::BTreeSet<usize> = (0..64)
            .flat_map(|st| s.window_starts(3, st, 4, 10))
            .collect();
        assert_eq!(starts.into_iter().collect::<Vec<_>>(), vec![0, 1]);
    }

    #[test]
    fn short_stream_and_bad_ids_are_refused() {
        let e = stream(5).check_window(6).unwrap_err();
        assert_eq!(e, "5 tokens is shorter than one window of --seq-len 6");
        assert!(stream(5).check_window(5).is_ok());
        let e = TokenStream::new(vec![1, -1], 4).unwrap_err();
        assert!(e.contains("token id -1 at index 1"), "{e}");
    }

    #[test]
    fn reads_narrow_int_dtypes_and_refuses_floats() {
        let dir = std::env::temp_dir().join(format!("reformc-train-data-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // int16 little-endian, hand-built header (the writer only makes f32/f64/i64).
        let header = "{'descr': '<i2', 'fortran_order': False, 'shape': (3,), }";
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        let pad = 64 - (10 + header.len() + 1) % 64;
        let h = format!("{header}{}\n", " ".repeat(pad));
        bytes.extend_from_slice(&(h.len() as u16).to_le_bytes());
        bytes.extend_from_slice(h.as_bytes());
        for v in [3i16, 0, 2] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        let p = dir.join("t16.npy");
        std::fs::write(&p, &bytes).unwrap();
        let s = TokenStream::read(&p, 4).unwrap();
        assert_eq!(s.len(), 3);
        let e = TokenStream::read(&p, 3).unwrap_err();
        assert!(e.contains("token id 3 at index 0 is outside [0, 3)"), "{e}");
        let f = dir.join("f.npy");
        npy::write(&f, &npy::to_bytes_f32(&[2], &[1.0, 2.0])).unwrap();
        let e = TokenStream::read(&f, 4).unwrap_err();
        assert!(e.contains("expected a 1-D integer array"), "{e}");
        let two = dir.join("two.npy");
        npy::write(&two, &npy::to_bytes_i64(&[1, 2], &[1, 2])).unwrap();
        let e = TokenStream::read(&two, 4).unwrap_err();
        assert!(e.contains("found shape [1, 2]"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
