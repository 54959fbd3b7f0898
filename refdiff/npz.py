"""``.npz`` files written atomically and read without pickle, and the checks every checkpoint kind
shares (docs/learned.md, "Checkpoints").

``save_npz_atomic`` and ``read_npz`` are the only places refdiff writes or reads an ``.npz``.
The entry helpers below (``read_schedule``, ``read_scale``, ``read_params``, ``config_from``,
``all_fields``, ``only_meta_fields``, ``fields_of``) are what each model kind's
``from_entries`` / ``to_entries`` (next to its class: nn.py, clip.py, latent.py) build on; the
format itself, and the table of kinds, is refdiff/checkpoint.py. Every check raises ValueError
saying what is wrong with the entry; the caller adds the file's name.
"""
import contextlib
import dataclasses
import os
import secrets
import zipfile
import zlib

import numpy as np

from .arrays import DTYPES
from .schedule import Schedule

ZIP_SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06")  # a zip's first member, or an empty zip
# What reading a damaged .npz raises (measured by truncating and bit-flipping a checkpoint at
# every byte: mostly BadZipFile, also ValueError, EOFError and NotImplementedError).
READ_ERRORS = (OSError, EOFError, ValueError, NotImplementedError, zipfile.BadZipFile, zlib.error)
META_FIELDS = {"format", "version", "kind", "config"}  # the fields of a checkpoint's 'meta' every kind has


def save_npz_atomic(path, **arrays):
    """Write arrays to ``path`` as an ``.npz`` through a temporary file in the same folder.

    The temporary file (a hidden ``.<name>.<random>.tmp``) is flushed, fsync'd and renamed over
    ``path`` with ``os.replace``; on any failure it is removed and the error re-raised, so
    ``path`` keeps its old content. The new file gets the usual permissions (0666 less the umask).

    Parameters
    ----------
    path : str or os.PathLike; its folder must exist (otherwise ValueError naming the folder)
    **arrays : the entries, by key, as ``numpy.savez`` takes them; object arrays are refused
        (ValueError), since they would need pickle to read
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


def read_npz(name):
    """Every entry of the .npz file ``name`` as a dict of arrays, read with ``allow_pickle=False``;
    ValueError says what is wrong (no file, not a zip, truncated, an entry that is not .npy)."""
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


# ---- checks shared by the checkpoint kinds --------------------------------------------------------
def read_schedule(betas):
    """Schedule from a 'schedule_betas' entry (float64, [0, beta_1, ..., beta_T])."""
    if betas is None:
        raise ValueError("no 'schedule_betas' entry")
    if betas.dtype != np.float64:
        raise ValueError(f"'schedule_betas' must be float64, got dtype {betas.dtype}")
    try:
        return Schedule(betas)
    except ValueError as err:
        raise ValueError(f"bad 'schedule_betas' ({err})") from None


def read_scale(entry):
    """A positive scale from a 'scale' entry: a 0-d float64, finite and > 0."""
    if entry is None:
        raise ValueError("no 'scale' entry")
    if entry.shape != () or entry.dtype != np.float64:
        raise ValueError(f"'scale' must be a 0-d float64 array, got shape {entry.shape} dtype {entry.dtype}")
    if not (np.isfinite(entry) and entry > 0):
        raise ValueError(f"'scale' must be finite and > 0, got {entry.item()!r}")
    return entry.item()


def read_params(params, shapes, dtype_name):
    """params in the order of ``shapes``, after checking names, shapes, dtype and finiteness."""
    if dtype_name not in DTYPES:
        raise ValueError(f"config dtype must be one of {tuple(DTYPES)}, got {dtype_name!r}")
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


def config_from(cls, fields):
    """cls(**fields), its ValueError or TypeError reported as a bad config."""
    try:
        return cls(**fields)
    except (TypeError, ValueError) as err:
        raise ValueError(f"bad config ({err})") from None


def config_object(meta):
    """meta's 'config', which must be a JSON object."""
    fields = meta.get("config")
    if not isinstance(fields, dict):
        raise ValueError(f"'meta' config must be a JSON object, got {type(fields).__name__}")
    return fields


def all_fields(meta, cls):
    """meta's 'config' object, which must name every field of the dataclass ``cls`` and no other."""
    fields, names = config_object(meta), {f.name for f in dataclasses.fields(cls)}
    if fields.keys() != names:
        missing, extra = sorted(names - fields.keys()), sorted(fields.keys() - names)
        raise ValueError(f"bad config (fields of {cls.__name__} missing {missing}, unexpected {extra})")
    return fields


def only_meta_fields(meta, allowed):
    """Refuse fields of 'meta' beyond the common ones and ``allowed``."""
    extra = sorted(meta.keys() - META_FIELDS - allowed)
    if extra:
        raise ValueError(f"unexpected 'meta' fields {extra} for kind {meta['kind']!r}")


def fields_of(config, cls):
    """A dataclass config's fields as JSON values: tuples as lists, numpy scalars as Python ones."""
    if not isinstance(config, cls):
        raise ValueError(f"config must be a {cls.__name__}, got {type(config).__name__}")
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    return {key: list(v) if isinstance(v, tuple) else v.item() if isinstance(v, np.generic) else v
            for key, v in fields.items()}
