//! Labels as the loss graph takes them.

use ndarray::{ArrayD, IxDyn};

/// Label value that marks a position without a loss term (PyTorch's `ignore_index`).
pub const IGNORE: i64 = -100;

/// `labels` `[B, L]` aligned with the logits' positions: shifted left by one
/// for a causal LM (`ReformerModelWithLMHead`: position t predicts label
/// t+1; the last position has no target), unchanged for a masked LM.
///
/// ```
/// use ndarray::{arr2, IxDyn};
/// use reformc_train::labels::aligned;
/// let l = arr2(&[[5i64, 6, 7]]).into_dyn();
/// assert_eq!(aligned(&l, true), arr2(&[[6i64, 7, -100]]).into_dyn());
/// assert_eq!(aligned(&l, false), l);
/// ```
pub fn aligned(labels: &ArrayD<i64>, causal: bool) -> ArrayD<i64> {
    if !causal {
        return labels.clone();
    }
    let (b, l) = (labels.shape()[0], labels.shape()[1]);
    ArrayD::from_shape_fn(IxDyn(&[b, l]), |ix| {
        if ix[1] + 1 < l {
            labels[[ix[0], ix[1] + 1]]
        } else {
            IGNORE
        }
    })
}
