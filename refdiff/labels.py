"""Class labels, the null label, and captions as phrases of a vocabulary (docs/notation.md, "Labels").

Labels are integers 0..K-1. Inside a label *array*, ``NULL_LABEL`` marks a row whose prediction
is unconditional, so that classifier-free guidance can ask for the conditional and the
unconditional prediction in one batched call. ``y=None`` means "every row unconditional".

A caption, the text condition of CLIP guidance (docs/clip.md), is a string of phrases from a
vocabulary (a tuple of strings); ``tokenize`` turns it into the phrases' indices.
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
    if isinstance(y, (int, np.integer)) and not isinstance(y, bool) and (
            0 <= y < num_labels or (allow_null and y == NULL_LABEL)):
        return np.full(n, int(y), dtype=np.int64)  # one valid label for every row, checked once
    null_note = f" or NULL_LABEL ({NULL_LABEL})" if allow_null else ""
    arr = as_int_batch(y, n, name, f"integer labels in 0..{num_labels - 1}{null_note}")
    ok = (arr >= 0) & (arr < num_labels)
    if allow_null:
        ok |= arr == NULL_LABEL
    if not ok.all():
        raise ValueError(f"{name} must be in 0..{num_labels - 1}{null_note}, got {arr[~ok][0]}")
    return arr


def tokenize(caption, vocab):
    """The vocabulary indices of a caption's phrases, matched left to right, longest phrase first.

    "thick vertical bar" -> [index of "thick", index of "vertical bar"]. A word that starts no
    vocabulary phrase raises ValueError naming the caption.
    """
    if not isinstance(caption, str):
        raise ValueError(f"caption must be a string, got {caption!r}")
    words, tokens, i = caption.split(), [], 0
    phrases = sorted(((tuple(p.split()), k) for k, p in enumerate(vocab)), key=lambda item: -len(item[0]))
    while i < len(words):
        match = next(((p, k) for p, k in phrases if tuple(words[i:i + len(p)]) == p), None)
        if match is None:
            raise ValueError(f"caption {caption!r}: {words[i]!r} is not in the vocabulary {vocab}")
        tokens.append(match[1])
        i += len(match[0])
    if not tokens:
        raise ValueError("caption must hold at least one word, got an empty string")
    return tokens
