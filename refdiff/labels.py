"""Class labels and the null label (docs/notation.md, "Labels").

Labels are integers 0..K-1. Inside a label *array*, ``NULL_LABEL`` marks a row whose prediction
is unconditional, so that classifier-free guidance can ask for the conditional and the
unconditional prediction in one batched call. ``y=None`` means "every row unconditional".
"""
import numpy as np

from .arrays import as_int_batch

NULL_LABEL = -1


def as_labels(y, n, num_labels, allow_null=True, name="y"):
    """Validate labels and return None (unconditional) or an int64 array of shape (n,).

    Parameters
    ----------
    y : None, int, or int array of shape (n,)
        None means unconditional; an int is broadcast to every row.
    n : int
        Batch size the labels must match.
    num_labels : int
        K; valid labels are 0..K-1, and NULL_LABEL too when ``allow_null``.
    """
    if y is None:
        return None
    null_note = f" or NULL_LABEL ({NULL_LABEL})" if allow_null else ""
    arr = as_int_batch(y, n, name, f"integer labels in 0..{num_labels - 1}{null_note}")
    ok = (arr >= 0) & (arr < num_labels)
    if allow_null:
        ok |= arr == NULL_LABEL
    if not ok.all():
        raise ValueError(f"{name} must be in 0..{num_labels - 1}{null_note}, got {arr[~ok][0]}")
    return arr
