"""Checkpoints: any trained model (denoiser, classifier, CLIP, autoencoder) as one ``.npz``, atomic, without pickle.

File format, version 1
----------------------
An ``.npz`` archive (a zip of ``.npy`` arrays, as ``numpy.savez`` writes it) holding exactly:

``meta``
    A 0-d unicode array whose text is a JSON object with the fields
    ``format`` = "refdiff-checkpoint"; ``version`` = 1 (an integer: readers refuse any other);
    ``kind`` = "denoiser", "classifier", "clip" or "autoencoder"; ``config``, a JSON object of
    the model's config (below); for "clip" only, ``noise_aware`` = true or false. A "clip" or
    "autoencoder" meta holds no other field, and its config every field of its dataclass.
``param/<name>``
    One array per network parameter, of dtype ``config.dtype``, finite, named and shaped as the
    config alone fixes them: ``nn.param_shapes`` (``W0, b0, ..., W_out, b_out``) for a denoiser
    or classifier, ``clip.clip_shapes`` ("image/...", "text/..." and the 0-d "logit_scale") for
    a CLIP, ``latent.autoencoder_shapes`` ("encoder/...", "decoder/...") for an autoencoder.
``schedule_betas`` (denoiser, classifier, noise-aware CLIP; absent for a clean CLIP and an autoencoder)
    float64, shape (T + 1,): ``Schedule.betas`` of the model's schedule, betas[0] = 0 and
    beta_t in (0, 1] for t = 1..T.
``scale`` (autoencoder only)
    A 0-d float64 array, finite and > 0: ``Autoencoder.scale``, the latent scale of (LD4).
``history`` (optional)
    A 1-D float array, the training loss per step (``model.history``).

The configs: "denoiser" and "classifier", ``MLPConfig.to_dict()`` (kind, dim, num_labels, hidden,
depth, t_embed, dtype, arch), whose kind must equal meta's; "clip", the fields of ``ClipConfig``
(dim, vocab, embed, hidden, depth, text_hidden, text_depth, t_embed, arch, dtype) with ``vocab``
a JSON list of strings, turned back into a tuple; "autoencoder", ``AEConfig.to_dict()`` (dim,
latent, hidden, depth, kl_weight, dtype).

Any other entry is an error. Arrays are stored bit for bit, so the loaded model computes exactly
what the saved one did. ``save`` writes through ``npz.save_npz_atomic`` (a temporary file renamed
over the target): the target holds the old checkpoint or the new one, never a part. ``load``
reads with ``allow_pickle=False`` and raises ValueError, naming the file and the problem, for
anything that is not a valid version-1 checkpoint.

Kinds
-----
This module knows the format; each kind's own entries are written and read next to its class
(``nn.network_entries`` / ``nn.network_from_entries``, ``clip.clip_entries`` / ...,
``latent.autoencoder_entries`` / ...) and listed in ``KINDS``. ``register_kind`` adds another
(docs/architecture.md, "How to add a model kind").
"""
import json
import os
from typing import Callable, NamedTuple

import numpy as np

from . import clip, latent, nn
from .npz import read_npz, read_params, save_npz_atomic

FORMAT = "refdiff-checkpoint"
VERSION = 1
PARAM = "param/"


class Kind(NamedTuple):
    """A model kind: its class, called as cls(params, config, extra), and its two entry functions.

    to_entries(model) -> (meta fields, arrays): the kind's fields of 'meta' ("config" and any
    other) and its arrays other than the parameters and the history.
    from_entries(meta, arrays) -> (config, extra, shapes): pops the kind's arrays from ``arrays``
    and checks them and meta; shapes are the parameter shapes the config fixes.
    """
    cls: type
    to_entries: Callable
    from_entries: Callable


KINDS = {"denoiser": Kind(nn.Denoiser, nn.network_entries, nn.network_from_entries),
         "classifier": Kind(nn.Classifier, nn.network_entries, nn.network_from_entries),
         "clip": Kind(clip.Clip, clip.clip_entries, clip.clip_from_entries),
         "autoencoder": Kind(latent.Autoencoder, latent.autoencoder_entries, latent.autoencoder_from_entries)}


def register_kind(name, kind):
    """Add a model kind to KINDS so that ``save`` writes and ``load`` reads it; a taken name raises ValueError."""
    if not (isinstance(name, str) and name) or name in KINDS:
        raise ValueError(f"name must be a new kind's name (not one of {tuple(KINDS)}), got {name!r}")
    if not isinstance(kind, Kind):
        raise ValueError(f"kind must be a checkpoint.Kind, got {type(kind).__name__}")
    KINDS[name] = kind


def save(path, model):
    """Write a Denoiser, Classifier, Clip or Autoencoder (a kind of KINDS) to ``path`` as a version-1 checkpoint.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.npz`` file to write; its folder must exist. An existing file is replaced.
    model : an instance of a class of KINDS
        Its ``.params``, ``.config``, its kind's entries and, if present, ``.history`` are stored.

    Returns
    -------
    None. A model that ``load`` would refuse (e.g. non-finite parameters) raises ValueError
    naming ``path``, and nothing is written.
    """
    name = os.fspath(path)
    try:
        arrays = _entries(model)
        _decode(arrays)  # the checks load makes, so that save never writes what load refuses
    except ValueError as err:
        raise ValueError(f"cannot save {name}: {err}") from None
    save_npz_atomic(name, **arrays)


def load(path, kind=None):
    """Read a checkpoint that ``save`` wrote, refusing anything else.

    Parameters
    ----------
    path : str or os.PathLike
        A version-1 checkpoint (format in the module docstring).
    kind : None or a name of KINDS
        The kind expected: a checkpoint of another kind (a classifier where a denoiser is
        expected) raises ValueError naming both. None reads any kind.

    Returns
    -------
    The model, of its kind's class, with the stored params (same dtype, bit for bit), config,
    Schedule (None for a clean CLIP) or scale, and ``.history`` if one was stored. A missing,
    damaged or invalid file raises ValueError naming ``path`` and the problem; pickled data is
    never unpickled.
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be None or one of {tuple(KINDS)}, got {kind!r}")
    name = os.fspath(path)
    try:
        return _decode(read_npz(name), kind)
    except ValueError as err:
        raise ValueError(f"checkpoint {name}: {err}") from None


def _entries(model):
    """The checkpoint entries of a model: 'meta', its kind's entries, its params and any history."""
    kind = next((name for name, k in KINDS.items() if isinstance(model, k.cls)), None)
    if kind is None:
        names = [k.cls.__name__ for k in KINDS.values()]
        raise ValueError(f"model must be a {', '.join(names[:-1])} or {names[-1]}, got {type(model).__name__}")
    meta, arrays = KINDS[kind].to_entries(model)
    arrays["meta"] = np.array(json.dumps({"format": FORMAT, "version": VERSION, "kind": kind, **meta}))
    arrays.update((PARAM + key, np.asarray(value)) for key, value in model.params.items())
    if getattr(model, "history", None) is not None:
        arrays["history"] = np.asarray(model.history)
    return arrays


def _decode(arrays, expected=None):
    """The model that checkpoint entries describe, of the kind ``expected`` if given; ValueError
    names the first problem found."""
    arrays = dict(arrays)
    meta = _meta(arrays.pop("meta", None))
    if meta.get("kind") not in KINDS:
        raise ValueError(f"'meta' kind must be one of {tuple(KINDS)}, got {meta.get('kind')!r}")
    if expected is not None and meta["kind"] != expected:
        raise ValueError(f"holds {_a(meta['kind'])}, expected {_a(expected)}")
    kind = KINDS[meta["kind"]]
    config, extra, shapes = kind.from_entries(meta, arrays)  # pops the kind's own entries
    history = arrays.pop("history", None)
    params = {key[len(PARAM):]: arrays.pop(key) for key in list(arrays) if key.startswith(PARAM)}
    if arrays:
        raise ValueError(f"unexpected entries {sorted(arrays)}")
    model = kind.cls(read_params(params, shapes, config.dtype), config, extra)
    if history is not None:
        if history.ndim != 1 or history.dtype.kind != "f":
            raise ValueError(f"'history' must be a 1-D float array, got shape {history.shape} dtype {history.dtype}")
        model.history = history
    return model


def _a(kind):
    """'a denoiser', 'an autoencoder': a kind's name with its article, for messages."""
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}"


def _meta(entry):
    """The JSON object in the 'meta' entry, with format and version checked."""
    if entry is None:
        raise ValueError("no 'meta' entry")
    if entry.ndim != 0 or entry.dtype.kind != "U":
        raise ValueError(f"'meta' must be a 0-d unicode array, got shape {entry.shape} dtype {entry.dtype}")
    try:
        meta = json.loads(entry.item())
    except json.JSONDecodeError as err:
        raise ValueError(f"'meta' is not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"'meta' must be a JSON object, got {type(meta).__name__}")
    if meta.get("format") != FORMAT:
        raise ValueError(f"'meta' format must be {FORMAT!r}, got {meta.get('format')!r}")
    if type(meta.get("version")) is not int or meta["version"] != VERSION:
        raise ValueError(f"unsupported version {meta.get('version')!r}: this refdiff reads version {VERSION}")
    return meta
