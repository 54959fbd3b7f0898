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
what the saved one did. ``save`` writes a temporary file in the target's folder, flushes and
fsyncs it and renames it over the target (``os.replace``): the target holds the old checkpoint or
the new one, never a part. ``load`` reads with ``allow_pickle=False`` and raises ValueError,
naming the file and the problem, for anything that is not a valid version-1 checkpoint.
"""
import contextlib
import dataclasses
import json
import os
import secrets
import zipfile
import zlib

import numpy as np

from .nn import DTYPES, Classifier, Denoiser, MLPConfig, param_shapes
from .schedule import Schedule

FORMAT = "refdiff-checkpoint"
VERSION = 1
MODELS = {"denoiser": Denoiser, "classifier": Classifier}
KINDS = ("denoiser", "classifier", "clip", "autoencoder")
META_FIELDS = {"format", "version", "kind", "config"}
PARAM = "param/"
ZIP_SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06")  # a zip's first member, or an empty zip
# What reading a damaged .npz raises (measured by truncating and bit-flipping a checkpoint at
# every byte: mostly BadZipFile, also ValueError, EOFError and NotImplementedError).
READ_ERRORS = (OSError, EOFError, ValueError, NotImplementedError, zipfile.BadZipFile, zlib.error)


def save(path, model):
    """Write a Denoiser, Classifier, Clip or Autoencoder to ``path`` as a version-1 checkpoint, atomically.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.npz`` file to write; its folder must exist. An existing file is replaced.
    model : Denoiser, Classifier, clip.Clip or latent.Autoencoder
        Its ``.params``, ``.config``, ``.sched`` (``.scale`` for an Autoencoder) and, if
        present, ``.history`` are stored.

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


def load(path):
    """Read a checkpoint that ``save`` wrote, refusing anything else.

    Parameters
    ----------
    path : str or os.PathLike
        A version-1 checkpoint (format in the module docstring).

    Returns
    -------
    Denoiser, Classifier, Clip or Autoencoder with the stored params (same dtype, bit for bit),
    config, Schedule (None for a clean CLIP) or scale, and ``.history`` if one was stored. A
    missing, damaged or invalid file raises ValueError naming ``path`` and the problem; pickled
    data is never unpickled.
    """
    name = os.fspath(path)
    try:
        return _decode(_read_npz(name))
    except ValueError as err:
        raise ValueError(f"checkpoint {name}: {err}") from None


def save_npz_atomic(path, **arrays):
    """Write arrays to ``path`` as an ``.npz`` through a temporary file in the same folder.

    The temporary file (a hidden ``.<name>.<random>.tmp``) is flushed, fsync'd and renamed over
    ``path`` with ``os.replace``; on any failure it is removed and the error re-raised, so
    ``path`` keeps its old content. The new file gets the usual permissions (0666 less the umask).

    Parameters
    ----------
    path : str or os.PathLike
        The file to write; its folder must exist (otherwise ValueError naming the folder).
    **arrays : array_like
        The entries, by key, as ``numpy.savez`` takes them; object arrays are refused (ValueError),
        since they would need pickle to read.

    Returns
    -------
    None
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"cannot write {path}: folder {folder} does not exist")
    pickled = [key for key, value in arrays.items() if np.asarray(value).dtype.hasobject]
    if pickled:
        raise ValueError(f"cannot write {path}: object arrays {pickled} would need pickle")
    # os.open with mode 0o666 lets the umask set the permissions, as for any new file (mkstemp's
    # are 0600); O_EXCL makes sure the temporary name is ours.
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_folder(folder)


def _fsync_folder(folder):
    """Make the rename itself durable (POSIX; elsewhere a no-op)."""
    if hasattr(os, "O_DIRECTORY"):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _read_npz(name):
    """Every entry of the .npz file ``name`` as a dict of arrays; ValueError says what is wrong."""
    try:
        with open(name, "rb") as f:
            head = f.read(4)
    except FileNotFoundError:
        raise ValueError("no such file") from None
    except OSError as err:
        raise ValueError(f"cannot be read ({err.strerror})") from None
    if head not in ZIP_SIGNATURES:  # np.load would try pickle on it next
        raise ValueError("not an .npz archive: " + ("the file is empty" if not head else "no zip signature"))
    try:
        npz = np.load(name, allow_pickle=False)
    except READ_ERRORS as err:
        raise ValueError(f"not a valid .npz archive, truncated or corrupt ({type(err).__name__}: {err})") from None
    arrays = {}
    with npz:
        for key in npz.files:
            try:
                arrays[key] = npz[key]
            except READ_ERRORS as err:
                raise ValueError(f"entry {key!r} cannot be read ({type(err).__name__}: {err})") from None
            if not isinstance(arrays[key], np.ndarray):
                raise ValueError(f"entry {key!r} is not a .npy array")
    return arrays


def _entries(model):
    """The checkpoint entries of a model: 'meta', its params, its kind's entries and any history."""
    if isinstance(model, tuple(MODELS.values())):
        meta, arrays = {"kind": model.kind, "config": model.config.to_dict()}, {"schedule_betas": model.sched.betas}
    else:
        meta, arrays = _clip_or_autoencoder_entries(model)
    arrays["meta"] = np.array(json.dumps({"format": FORMAT, "version": VERSION, **meta}))
    arrays.update((PARAM + key, np.asarray(value)) for key, value in model.params.items())
    if getattr(model, "history", None) is not None:
        arrays["history"] = np.asarray(model.history)
    return arrays


def _clip_or_autoencoder_entries(model):
    """The fields of 'meta' and the other entries (but params and history) of a Clip or Autoencoder."""
    from .clip import Clip  # lazily: clip and latent import train, and take ~0.7 s to import
    from .latent import Autoencoder
    if isinstance(model, Clip):
        meta = {"kind": "clip", "config": _fields_of(model.config), "noise_aware": model.sched is not None}
        return meta, {} if model.sched is None else {"schedule_betas": model.sched.betas}
    if isinstance(model, Autoencoder):
        return {"kind": "autoencoder", "config": _fields_of(model.config)}, {"scale": np.array(model.scale, np.float64)}
    raise ValueError(f"model must be a Denoiser, Classifier, Clip or Autoencoder, got {type(model).__name__}")


def _fields_of(config):
    """A ClipConfig's or AEConfig's fields as JSON values: the vocab tuple as a list, numpy scalars as Python ones."""
    if not dataclasses.is_dataclass(config):
        raise ValueError(f"config must be a ClipConfig or AEConfig, got {type(config).__name__}")
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    return {key: list(v) if isinstance(v, tuple) else v.item() if isinstance(v, np.generic) else v
            for key, v in fields.items()}


def _decode(arrays):
    """The model that checkpoint entries describe; ValueError names the first problem found."""
    arrays = dict(arrays)
    meta = _meta(arrays.pop("meta", None))
    if meta.get("kind") not in KINDS:
        raise ValueError(f"'meta' kind must be one of {KINDS}, got {meta.get('kind')!r}")
    reader = {"clip": _read_clip, "autoencoder": _read_autoencoder}.get(meta["kind"], _read_mlp)
    cls, config, extra, shapes = reader(meta, arrays)  # pops the kind's own entries
    history = arrays.pop("history", None)
    params = {key[len(PARAM):]: arrays.pop(key) for key in list(arrays) if key.startswith(PARAM)}
    if arrays:
        raise ValueError(f"unexpected entries {sorted(arrays)}")
    model = cls(_params(params, shapes, config.dtype), config, extra)
    if history is not None:
        if history.ndim != 1 or history.dtype.kind != "f":
            raise ValueError(f"'history' must be a 1-D float array, got shape {history.shape} dtype {history.dtype}")
        model.history = history
    return model


def _read_mlp(meta, arrays):
    """A denoiser's or classifier's class, MLPConfig, Schedule and parameter shapes."""
    config = _config(meta)
    return MODELS[config.kind], config, _schedule(arrays.pop("schedule_betas", None)), param_shapes(config)


def _read_clip(meta, arrays):
    """A CLIP's class, ClipConfig, Schedule (None if clean) and parameter shapes."""
    from .clip import Clip, ClipConfig, clip_shapes
    _no_other_meta(meta, {"noise_aware"})
    noise_aware = meta.get("noise_aware")
    if type(noise_aware) is not bool:
        raise ValueError(f"'meta' noise_aware must be true or false, got {noise_aware!r}")
    fields = _all_fields(meta, ClipConfig)
    if not isinstance(fields["vocab"], list):
        raise ValueError(f"bad config (vocab must be a JSON list of strings, got {fields['vocab']!r})")
    config = _make(ClipConfig, {**fields, "vocab": tuple(fields["vocab"])})
    betas = arrays.pop("schedule_betas", None)
    if noise_aware != (betas is not None):
        raise ValueError("a noise-aware CLIP needs a 'schedule_betas' entry" if noise_aware else
                         "a clean CLIP ('meta' noise_aware false) must have no 'schedule_betas' entry")
    return Clip, config, _schedule(betas) if noise_aware else None, clip_shapes(config)


def _read_autoencoder(meta, arrays):
    """An autoencoder's class, AEConfig, scale and parameter shapes."""
    from .latent import AEConfig, Autoencoder, autoencoder_shapes
    _no_other_meta(meta, set())
    config = _make(AEConfig, _all_fields(meta, AEConfig))
    return Autoencoder, config, _scale(arrays.pop("scale", None)), autoencoder_shapes(config)


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


def _no_other_meta(meta, allowed):
    """Refuse fields of 'meta' beyond the common ones and ``allowed``."""
    extra = sorted(meta.keys() - META_FIELDS - allowed)
    if extra:
        raise ValueError(f"unexpected 'meta' fields {extra} for kind {meta['kind']!r}")


def _all_fields(meta, cls):
    """meta's 'config' object, which must name every field of the dataclass ``cls`` and no other."""
    fields, names = meta.get("config"), {f.name for f in dataclasses.fields(cls)}
    if not isinstance(fields, dict):
        raise ValueError(f"'meta' config must be a JSON object, got {type(fields).__name__}")
    if fields.keys() != names:
        missing, extra = sorted(names - fields.keys()), sorted(fields.keys() - names)
        raise ValueError(f"bad config (fields of {cls.__name__} missing {missing}, unexpected {extra})")
    return fields


def _make(cls, fields):
    """cls(**fields), its ValueError or TypeError reported as a bad config."""
    try:
        return cls(**fields)
    except (TypeError, ValueError) as err:
        raise ValueError(f"bad config ({err})") from None


def _config(meta):
    """MLPConfig from meta's 'config', which must agree with meta's 'kind'."""
    kind, fields = meta.get("kind"), meta.get("config")
    if not isinstance(fields, dict):
        raise ValueError(f"'meta' config must be a JSON object, got {type(fields).__name__}")
    config = _make(MLPConfig, fields)
    if config.kind != kind:
        raise ValueError(f"config kind {config.kind!r} differs from 'meta' kind {kind!r}")
    return config


def _schedule(betas):
    """Schedule from the 'schedule_betas' entry (float64, [0, beta_1, ..., beta_T])."""
    if betas is None:
        raise ValueError("no 'schedule_betas' entry")
    if betas.dtype != np.float64:
        raise ValueError(f"'schedule_betas' must be float64, got dtype {betas.dtype}")
    try:
        return Schedule(betas)
    except ValueError as err:
        raise ValueError(f"bad 'schedule_betas' ({err})") from None


def _scale(entry):
    """The autoencoder's scale from the 'scale' entry: a 0-d float64, finite and > 0."""
    if entry is None:
        raise ValueError("no 'scale' entry")
    if entry.shape != () or entry.dtype != np.float64:
        raise ValueError(f"'scale' must be a 0-d float64 array, got shape {entry.shape} dtype {entry.dtype}")
    if not (np.isfinite(entry) and entry > 0):
        raise ValueError(f"'scale' must be finite and > 0, got {entry.item()!r}")
    return entry.item()


def _params(params, shapes, dtype_name):
    """params in the order of ``shapes``, after checking names, shapes, dtype and finiteness."""
    dtype = DTYPES[dtype_name]
    if params.keys() != shapes.keys():
        missing, extra = sorted(shapes.keys() - params.keys()), sorted(params.keys() - shapes.keys())
        raise ValueError(f"parameter names do not match the config: missing {missing}, unexpected {extra}")
    for key, shape in shapes.items():
        value = params[key]
        if value.shape != shape or value.dtype != dtype:
            raise ValueError(f"parameter {key!r} must have shape {shape} and dtype {dtype_name}, "
                             f"got shape {value.shape} dtype {value.dtype}")
        if not np.all(np.isfinite(value)):
            raise ValueError(f"parameter {key!r} is not finite (NaN or inf)")
    return {key: params[key] for key in shapes}
