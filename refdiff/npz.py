"""``.npz`` files written atomically and read without pickle, and the checks every checkpoint kind
shares (docs/learned.md, "Checkpoints").

``save_npz_atomic`` and ``read_npz`` are the only places refdiff writes or reads an ``.npz``;
``write_atomic`` makes every write atomic (``.npz``, figures and metrics.json alike) through
the temporary file that ``temp_path`` names,
``check_output`` and ``make_folder`` check where an output goes.
The entry helpers below (``read_schedule``, ``read_scale``, ``read_params``, ``config_from``,
``all_fields``, ``only_meta_fields``, ``fields_of``) are what each model kind's
``from_entries`` / ``to_entries`` (next to its class: nn.py, clip.py, latent.py) build on; the
format itself, and the table of kinds, is refdiff/checkpoint.py. Every check raises ValueError
saying what is wrong with the entry; the caller adds the file's name.
"""
import contextlib
import dataclasses
import math
import os
import re
import secrets
import stat
import time
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
NPY_SIGNATURE = b"\x93NUM"  # a single array as numpy.save writes it
HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
STALE_SECONDS = 3600  # a temporary file of an older naming (no pid) is stale after an hour


def save_npz_atomic(path, **arrays):
    """Write arrays to ``path`` as an ``.npz`` through a temporary file in the same folder.

    The temporary file (``temp_path``) is flushed, fsync'd and renamed over ``path`` with
    ``os.replace``; on any failure it is removed and the error re-raised (an OSError as a
    ValueError naming ``path``), so ``path`` keeps its old content. The new file gets the usual
    permissions (0666 less the umask).

    Parameters
    ----------
    path : str or os.PathLike, a file name in an existing folder (``check_output``)
    **arrays : the entries, by key, as ``numpy.savez`` takes them; object arrays are refused
        (ValueError), since they would need pickle to read
    """
    path = os.fspath(path)
    pickled = [key for key, value in arrays.items() if np.asarray(value).dtype.hasobject]
    if pickled:
        raise ValueError(f"cannot write {path}: object arrays {pickled} would need pickle")
    write_atomic(path, lambda f: np.savez(f, **arrays))


def write_atomic(path, write):
    """Write a file through a temporary one beside it: ``path`` holds its old content or the new one,
    never part of one.

    ``write(f)`` writes the content to the binary file object f of a new temporary file
    (``temp_path``), which is flushed, fsync'd and renamed over ``path`` with ``os.replace``; on
    any failure it is removed and the error re-raised, an OSError as a ValueError naming ``path``.

    Parameters
    ----------
    path : str or os.PathLike, a file name in an existing folder (``check_output``)
    write : callable(f), e.g. ``lambda f: np.savez(f, **arrays)`` or ``lambda f: fig.savefig(f, format="png")``
    """
    path = os.fspath(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_folder(os.path.dirname(tmp))
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise ValueError(f"cannot write {path}: {err.strerror or err}") from None
        raise


def check_output(path):
    """Return ``path`` if a file can be written there: a file name, not a folder, in an existing folder.

    Parameters
    ----------
    path : str or os.PathLike, the file to be written (an existing file will be replaced)

    Returns
    -------
    str, the path; otherwise ValueError naming it and saying what is wrong.
    """
    path = os.fspath(path)
    folder, name = os.path.split(path)
    if not path:
        raise ValueError("cannot write a file without a name (the path is empty)")
    if not name or os.path.isdir(path):
        raise ValueError(f"cannot write {path}: it is a folder, not a file name")
    if folder and not os.path.isdir(folder):
        problem = "is not a folder" if os.path.exists(folder) else "does not exist"
        raise ValueError(f"cannot write {path}: folder {folder} {problem}")
    return path


def make_folder(path):
    """Create the folder ``path`` (and its parents) unless it exists; ValueError if that cannot be done.

    Returns the path as a str.
    """
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"cannot create folder {path}: a file of that name exists")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise ValueError(f"cannot create folder {path}: {err.strerror}") from None
    return path


def temp_path(path):
    """A new, empty temporary file beside ``path`` for an atomic write, after removing stale ones.

    Its name is ``.<name>.<pid>.<random>.tmp`` (hidden, in the folder of ``path``), created with
    O_EXCL so that no two writers share one, even at the same time. Temporary files of this
    naming for the same target whose process no longer runs (a killed save) are removed first,
    and so are those of the older namings ``.<name>.<random>.tmp`` and ``.<name>.tmp`` once
    older than STALE_SECONDS.

    Parameters
    ----------
    path : str or os.PathLike, the target (``check_output`` applies)

    Returns
    -------
    str, the temporary file's path; the caller writes it and renames it over ``path``.
    """
    path = check_output(path)
    folder, name = os.path.split(os.path.abspath(path))
    remove_stale_temps(path)
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.{secrets.token_hex(8)}.tmp")
    try:  # mode 0o666 lets the umask set the permissions, as for any new file (mkstemp's are 0600)
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666))
    except OSError as err:
        raise ValueError(f"cannot write {path}: {err.strerror}") from None
    return tmp


def remove_stale_temps(path):
    """Remove the temporary files ``temp_path`` left for ``path`` when their writer was killed.

    Returns the names removed. A file whose pid still runs is kept (a save in progress).
    """
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    pattern = re.compile(rf"\.{re.escape(name)}(?:\.(\d+))?(?:\.[0-9a-f]{{16}})?\.tmp")
    try:
        entries = os.listdir(folder)
    except OSError:  # an unreadable folder: nothing can be cleaned there
        return []
    removed = []
    for entry in entries:
        match = pattern.fullmatch(entry)
        if match and _stale(os.path.join(folder, entry), match.group(1)):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(folder, entry))
                removed.append(entry)
    return removed


def _stale(tmp, pid):
    """Whether a temporary file's writer is gone: its pid runs no more (POSIX), or, for a name
    without a pid, the file is older than STALE_SECONDS."""
    if pid is None:
        with contextlib.suppress(OSError):
            return time.time() - os.stat(tmp).st_mtime > STALE_SECONDS
        return False
    if os.name != "posix":  # os.kill(pid, 0) is no liveness test elsewhere
        return False
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, OverflowError):  # no such process (a pid beyond a C int never was one)
        return True
    except PermissionError:  # another user's process, still running
        return False
    return False


def temp_target(name):
    """The target a temporary file of ``temp_path`` stands for (for messages), else ``name`` itself."""
    folder, base = os.path.split(os.fspath(name))
    match = re.fullmatch(r"\.(.+)\.\d+\.[0-9a-f]{16}\.tmp", base)
    return os.path.join(folder, match.group(1)) if match else name


def _fsync_folder(folder):
    """Make the rename itself durable (POSIX; elsewhere a no-op)."""
    if hasattr(os, "O_DIRECTORY"):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_npz(name):
    """Every entry of the .npz file ``name`` as a dict of arrays, read with ``allow_pickle=False``.

    The file is opened once, without blocking (a FIFO or a device is refused, never waited on),
    and each entry's .npy header is checked against the bytes its zip member holds before any
    array is allocated, so a damaged header cannot ask for memory it does not describe.

    Parameters
    ----------
    name : str or os.PathLike

    Returns
    -------
    {key: numpy.ndarray}; ValueError says what is wrong (no such file, not a regular file, not a
    zip, truncated, an entry that is not a plain .npy array or that does not fit in memory).
    """
    with os.fdopen(_open_regular(name), "rb") as f:
        _check_signature(f.read(4))
        f.seek(0)
        try:
            npz = np.load(f, allow_pickle=False)
        except READ_ERRORS as err:
            raise ValueError(f"not a valid .npz archive, truncated or corrupt ({type(err).__name__}: {err})") from None
        with npz:
            return {key: _entry(npz, key) for key in npz.files}


def _open_regular(name):
    """A file descriptor of the regular file ``name``, opened for reading without blocking: a FIFO,
    a device or a folder is refused (ValueError) before anything is read or waited on."""
    try:
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise ValueError("no such file") from None
    except OSError as err:
        raise ValueError(f"cannot be read ({err.strerror})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise ValueError("is a folder, not a file" if stat.S_ISDIR(mode) else "is not a regular file")
    return fd


def _check_signature(head):
    """Refuse a file that does not start as a zip: np.load would try it as a .npy, text or pickle next."""
    if head in ZIP_SIGNATURES:
        return
    if not head:
        raise ValueError("not an .npz archive: the file is empty")
    if head == NPY_SIGNATURE:
        raise ValueError("not an .npz archive: it holds a single .npy array (numpy.save); numpy.savez writes .npz")
    raise ValueError("not an .npz archive: no zip signature")


def _entry(npz, key):
    """One entry of an open NpzFile, read only once its .npy header agrees with its member's size."""
    member = f"{key}.npy"
    if member not in npz.zip.namelist():
        raise ValueError(f"entry {key!r} is not a .npy array")
    try:
        with npz.zip.open(member) as f:
            version = np.lib.format.read_magic(f)
            shape, _, dtype = HEADER_READERS[version](f) if version in HEADER_READERS else (None, None, None)
            held = npz.zip.getinfo(member).file_size - f.tell()
    except READ_ERRORS as err:
        raise ValueError(f"entry {key!r} cannot be read ({type(err).__name__}: {err})") from None
    if dtype is None:
        raise ValueError(f"entry {key!r} has .npy format version {version}, not 1.0 or 2.0")
    if dtype.hasobject:
        raise ValueError(f"entry {key!r} holds Python objects, which only pickle could read")
    claimed = math.prod(shape) * dtype.itemsize
    if claimed != held:
        raise ValueError(f"entry {key!r} is damaged: its header claims shape {shape} of {dtype} "
                         f"({_size(claimed)}) but it holds {_size(held)}")
    try:
        return npz[key]
    except MemoryError:
        raise ValueError(f"entry {key!r} needs {_size(claimed)} of memory, more than is available") from None
    except READ_ERRORS as err:
        raise ValueError(f"entry {key!r} cannot be read ({type(err).__name__}: {err})") from None


def _size(n):
    """A byte count for a message: '512 bytes', '3.2 MB', '160 GB'."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} bytes"


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
