//! The range rule for replayed LSH bucket ids (REFORMER.md 1.3-1.4).
//!
//! Ids come from callers (a `.npy` file, a C array); they index the kernels'
//! counting sort, so they are checked where they enter, not trusted.

use crate::error::{Error, Result};

/// Checks ids laid out as rows of `rounds` x `len` (the last two axes of
/// `[n_lsh_layers, B, H, r, P]`) against one bucket count: round `rho` must
/// hold ids in `[rho*nb, (rho+1)*nb)`, `nb` counting the padding bucket when
/// the caller knows the sequence is padded. The message names the first id
/// outside, its flat index and its round's range.
///
/// ```
/// use reformc_runtime::attention::check_bucket_ids;
/// assert!(check_bucket_ids(&[0, 3, 5, 4], 2, 2, 4).is_ok());
/// let e = check_bucket_ids(&[0, 3, 1, 4], 2, 2, 4).unwrap_err();
/// assert!(e.contains("flat index 2"), "{e}");
/// ```
pub fn check_bucket_ids(
    ids: &[i64],
    rounds: usize,
    len: usize,
    nb: u64,
) -> std::result::Result<(), String> {
    match first_outside(ids, rounds, len, nb) {
        Some(i) => Err(format!(
            "{} ({nb} buckets per round)",
            out_of_range(ids, i, rounds, len, nb)
        )),
        None => Ok(()),
    }
}

/// Like [`check_bucket_ids`] where the padding is not known (the C ABI, before
/// the run): `nb'` is `nb` or, when the sequence is padded, `nb + 1` (the
/// padding bucket), and the whole tensor must fit one of the two.
///
/// ```
/// use reformc_runtime::attention::check_bucket_range;
/// // 2 rounds of 3 slots, 4 buckets per round.
/// assert!(check_bucket_range(&[0, 3, 1, 4, 7, 5], 2, 3, 4).is_ok());
/// // With the padding bucket (5 per round): round 1 holds 5..10.
/// assert!(check_bucket_range(&[4, 0, 1, 9, 5, 6], 2, 3, 4).is_ok());
/// assert!(check_bucket_range(&[0, 3, 1, 4, -1, 5], 2, 3, 4).is_err());
/// assert!(check_bucket_range(&[0, 3, 1, 4, 1 << 62, 5], 2, 3, 4).is_err());
/// ```
pub fn check_bucket_range(ids: &[i64], rounds: usize, len: usize, nb: u64) -> Result<()> {
    let plain = first_outside(ids, rounds, len, nb);
    let padded = first_outside(ids, rounds, len, nb + 1);
    match (plain, padded) {
        (Some(a), Some(b)) => {
            // Report against the rule that held longer: the likelier intent.
            let (i, nbp) = if b > a { (b, nb + 1) } else { (a, nb) };
            Err(Error::OutOfRange(format!(
                "{} ({nb} buckets per round, {} with the padding bucket)",
                out_of_range(ids, i, rounds, len, nbp),
                nb + 1
            )))
        }
        _ => Ok(()),
    }
}

/// The id at `i` and its round's range under `nb` buckets per round.
fn out_of_range(ids: &[i64], i: usize, rounds: usize, len: usize, nb: u64) -> String {
    let round = round_of(i, rounds, len) as i128;
    let (lo, hi) = (round * i128::from(nb), (round + 1) * i128::from(nb));
    format!(
        "bucket id {} at flat index {i} is out of range: round {round} expects {lo} <= id < {hi}",
        ids[i]
    )
}

fn round_of(i: usize, rounds: usize, len: usize) -> usize {
    (i % (rounds * len).max(1)) / len.max(1)
}

fn first_outside(ids: &[i64], rounds: usize, len: usize, nb: u64) -> Option<usize> {
    if rounds == 0 || len == 0 {
        return (!ids.is_empty()).then_some(0);
    }
    let nb = i128::from(nb);
    ids.iter().enumerate().position(|(i, &b)| {
        let round = round_of(i, rounds, len) as i128;
        !(round * nb..(round + 1) * nb).contains(&i128::from(b))
    })
}

#[cfg(test)]
mod tests {
    use super::check_bucket_range;

    #[test]
    fn another_rounds_id_is_refused() {
        // Id 1 belongs to round 0; in round 1 (ids 4..8 or 5..10) it is wrong.
        let e = check_bucket_range(&[0, 1, 4, 1], 2, 2, 4).unwrap_err();
        assert_eq!(e.code(), 2);
        assert!(e.message().contains("flat index 3"), "{}", e.message());
    }

    #[test]
    fn mixed_rules_are_refused() {
        // Row 0 fits nb = 4 only (id 4 in round 1), row 1 fits nb' = 5 only
        // (id 9 in round 1): no single rule holds for the tensor.
        assert!(check_bucket_range(&[0, 4, 0, 9], 2, 1, 4).is_err());
    }

    #[test]
    fn empty_is_fine() {
        assert!(check_bucket_range(&[], 2, 3, 4).is_ok());
    }
}
