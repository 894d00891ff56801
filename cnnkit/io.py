"""Weight files and atomic writes.

Weights are stored as a NumPy ``.npz`` archive (an uncompressed zip of ``.npy``
entries, one per tensor) and read back with pickling disabled, so loading a
weight file never executes code.  Optional metadata (any JSON-serialisable
dict: architecture summary, cnnkit version, training state, ...) is stored in
the same archive as UTF-8 JSON bytes in a ``uint8`` array under the reserved
key :data:`METADATA_KEY`.

Every file this module writes goes through :func:`atomic_open`: the bytes go to
a temporary file in the target's folder, which is flushed, fsynced and then
renamed onto the target with :func:`os.replace`.  A reader therefore sees
either the old file or the complete new one, never a half-written file, and a
failed write leaves the old file untouched and no temporary file behind.

This module depends on NumPy and the standard library only.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import secrets
import stat
import zipfile
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote, unquote

import numpy as np

__all__ = [
    "METADATA_KEY",
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_text",
    "save_weights",
    "load_weights",
    "check_state",
]

#: Reserved archive key under which :func:`save_weights` stores the metadata JSON.
METADATA_KEY = "__cnnkit_metadata__"

# dtype kinds accepted for tensors: bool, signed/unsigned integers, floats, complex.
_NUMERIC_KINDS = "biufc"


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def _fspath(path: Any, what: str = "path") -> str:
    """Validate a path argument and return it as ``str``."""
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{what} must be a str or os.PathLike, got {type(path).__name__}")
    p = os.fspath(path)
    if not isinstance(p, str):
        raise TypeError(f"{what} must be a text path, got {type(p).__name__}")
    if p == "":
        raise ValueError(f"{what} must not be empty")
    if "\x00" in p:
        raise ValueError(f"{what} must not contain NUL characters: {p!r}")
    return p


def _check_file(target: str, what: str, error: type = ValueError) -> None:
    """Refuse a missing path (``FileNotFoundError``) or a folder (``error``), naming the file."""
    if not os.path.exists(target):
        raise FileNotFoundError(f"{target}: {what} not found")
    if os.path.isdir(target):
        raise error(f"{target}: is a folder, not a {what}")


def _fsync_dir(folder: str) -> None:
    """Best-effort fsync of a directory so a completed rename survives a crash."""
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _create_temp(folder: str, base: str) -> tuple[int, str]:
    """Create a new, empty, exclusively-owned temporary file next to the target.

    Unlike :func:`tempfile.mkstemp` (always mode 0600) the file is created with
    the mode a plain ``open(path, "w")`` would give (0666 minus the umask), so
    the renamed file has ordinary permissions.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        name = os.path.join(folder, f".{base}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(name, flags, 0o666), name
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file in {folder!r}")


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", *,
                encoding: str | None = None, fsync: bool = True) -> Iterator[io.IOBase]:
    """Open ``path`` for writing, atomically.

    Yields a file object that writes to a temporary file in the same folder as
    ``path``.  When the ``with`` block completes, the temporary file is flushed,
    fsynced (unless ``fsync=False``) and renamed onto ``path`` with
    :func:`os.replace`.  If the block raises, the temporary file is removed, the
    exception propagates and any existing file at ``path`` is left untouched.

    ``mode`` is ``"wb"`` (binary, the default) or ``"w"`` (text; ``encoding``
    defaults to UTF-8).  If ``path`` already exists its permission bits are kept.
    """
    target = _fspath(path)
    if mode not in ("wb", "w", "bw", "wt", "tw"):
        raise ValueError(f"atomic_open mode must be 'wb' or 'w', got {mode!r}")
    binary = "b" in mode
    if binary and encoding is not None:
        raise ValueError("encoding is only allowed in text mode ('w')")
    if not isinstance(fsync, bool):
        raise TypeError(f"fsync must be a bool, got {type(fsync).__name__}")
    if target.endswith(("/", os.sep)):
        raise ValueError(f"{target}: path names a folder, not a file")
    # Follow a symlink so the file it points to is replaced, not the link itself.
    real = os.path.realpath(target)
    folder, base = os.path.split(real)
    if os.path.isdir(target):
        raise IsADirectoryError(f"{target}: is a folder, cannot write a file there")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{target}: the folder {folder!r} does not exist")

    try:
        existing_mode = stat.S_IMODE(os.stat(real).st_mode)
    except OSError:
        existing_mode = None

    fd, tmp = _create_temp(folder, base)
    f = None
    try:
        if binary:
            f = os.fdopen(fd, "wb")
        else:
            f = os.fdopen(fd, "w", encoding=encoding or "utf-8", newline="")
        yield f
        f.flush()
        if fsync:
            os.fsync(f.fileno())
        f.close()
        if existing_mode is not None:
            os.chmod(tmp, existing_mode)
        os.replace(tmp, real)
    except BaseException:
        try:
            if f is not None:
                f.close()
            else:
                os.close(fd)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if fsync:
        _fsync_dir(folder)


def atomic_write_bytes(path: str | os.PathLike, data: bytes | bytearray | memoryview, *,
                       fsync: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes-like, got {type(data).__name__}")
    with atomic_open(path, "wb", fsync=fsync) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8",
                      fsync: bool = True) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_open`)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    with atomic_open(path, "w", encoding=encoding, fsync=fsync) as f:
        f.write(text)


# ---------------------------------------------------------------------------
# saving
# ---------------------------------------------------------------------------

def _validate_arrays(arrays: Any) -> dict[str, np.ndarray]:
    if isinstance(arrays, Mapping):
        items = list(arrays.items())
    else:
        try:
            items = [tuple(item) for item in arrays]
        except TypeError:
            raise TypeError("arrays must be a dict mapping names to numpy arrays, "
                            f"got {type(arrays).__name__}") from None
        for item in items:
            if len(item) != 2:
                raise TypeError("arrays must be a dict or an iterable of (name, array) pairs")
    out: dict[str, np.ndarray] = {}
    for key, value in items:
        if not isinstance(key, str):
            raise TypeError(f"tensor names must be str, got {type(key).__name__}: {key!r}")
        if key == "":
            raise ValueError("tensor names must not be empty")
        if "\x00" in key:
            raise ValueError(f"tensor name {key!r} contains a NUL character")
        if key == METADATA_KEY:
            raise ValueError(f"tensor name {key!r} is reserved for metadata")
        if key in out:
            raise ValueError(f"duplicate tensor name {key!r}")
        if isinstance(value, np.generic):
            value = np.asarray(value)
        if not isinstance(value, np.ndarray):
            raise TypeError(f"tensor {key!r} must be a numpy array, got {type(value).__name__}")
        if value.dtype.kind not in _NUMERIC_KINDS or value.dtype.fields is not None:
            raise TypeError(f"tensor {key!r} has dtype {value.dtype}, only numeric arrays "
                            "(bool, int, uint, float, complex) can be saved")
        out[key] = value
    return out


def _encode_metadata(metadata: Any) -> np.ndarray | None:
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a dict or None, got {type(metadata).__name__}")
    for k in metadata:
        if not isinstance(k, str):
            raise TypeError(f"metadata keys must be str, got {type(k).__name__}: {k!r}")
    try:
        text = json.dumps(dict(metadata), ensure_ascii=False, allow_nan=False, sort_keys=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"metadata is not JSON-serialisable: {e}") from None
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()


def save_weights(path: str | os.PathLike, arrays: Mapping[str, np.ndarray],
                 metadata: Mapping[str, Any] | None = None) -> None:
    """Save named arrays (and optional JSON metadata) to an ``.npz`` file atomically.

    ``arrays`` maps non-empty string names to numeric NumPy arrays (bool,
    integer, float or complex; object and structured arrays are refused).
    ``metadata`` is an optional JSON-serialisable dict; it comes back from
    :func:`load_weights` as the JSON round trip of what was given (tuples
    become lists).  The file is a standard ``.npz``: ``np.load(path)`` reads it
    too.  The name is used as given; no ``.npz`` suffix is appended.
    """
    target = _fspath(path)
    tensors = _validate_arrays(arrays)
    meta = _encode_metadata(metadata)
    if meta is not None:
        tensors[METADATA_KEY] = meta
    with atomic_open(target, "wb") as f:
        # Written entry by entry (as numpy.savez does) rather than through
        # np.savez(**tensors), so that no tensor name can collide with one of
        # np.savez's own keyword parameters.
        with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED,
                             allowZip64=True) as zf:
            for key, value in tensors.items():
                with zf.open(key + ".npy", mode="w", force_zip64=True) as entry:
                    np.lib.format.write_array(entry, np.asanyarray(value),
                                              allow_pickle=False)


# ---------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------

_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")


def _read_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: str, key: str) -> np.ndarray:
    where = f"{target}: entry {key!r}"
    with zf.open(info) as fp:
        try:
            version = np.lib.format.read_magic(fp)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
        except (ValueError, EOFError) as e:
            raise ValueError(f"{where} is not a valid .npy array: {e}") from None
        if dtype.hasobject:
            raise ValueError(f"{where} is an object array (pickled Python objects); refused: "
                             "weight files may only contain numeric arrays, and loading "
                             "pickles could execute arbitrary code")
        if dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None:
            raise ValueError(f"{where} has non-numeric dtype {dtype}; refused")
        header_len = fp.tell()
        declared = math.prod(shape) * dtype.itemsize
        if header_len + declared != info.file_size:
            raise ValueError(f"{where} is corrupt: its header declares shape {tuple(shape)} "
                             f"{dtype} ({declared} bytes) but the entry holds "
                             f"{info.file_size - header_len} bytes of data")
        data = fp.read(declared)
        if len(data) != declared:
            raise ValueError(f"{where} is truncated: expected {declared} bytes of data, "
                             f"got {len(data)}")
        if fp.read(1):  # also lets zipfile verify the CRC at end of entry
            raise ValueError(f"{where} has trailing bytes after the array data")
    arr = np.frombuffer(data, dtype=dtype)
    if fortran:
        arr = arr.reshape(shape[::-1]).transpose()
    else:
        arr = arr.reshape(shape)
    return arr.copy()  # writable, owns its memory


def load_weights(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Load a weight file written by :func:`save_weights` (or any numeric ``.npz``).

    Returns ``(arrays, metadata)``: a dict of name -> array in file order, and
    the metadata dict (empty if the file has none).  Pickled (object) arrays
    are refused and never unpickled, so loading never executes code.  Any
    problem — missing file, not an ``.npz``, truncated or corrupt archive,
    object arrays, bad metadata — raises an error whose message starts with
    the file name (``FileNotFoundError`` for a missing file, ``ValueError``
    for everything else).
    """
    target = _fspath(path)
    _check_file(target, "weight file")
    try:
        with open(target, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise ValueError(f"{target}: cannot read weight file: {e}") from None
    if head not in _ZIP_MAGICS:
        if not head:
            why = "the file is empty"
        elif head.startswith(b"\x93NUMPY"[:4]):
            why = "it is a single .npy array, not an .npz archive"
        else:
            why = f"it does not start with a zip signature (first bytes {head!r})"
        raise ValueError(f"{target}: not a weight file (.npz): {why}")

    arrays: dict[str, np.ndarray] = {}
    meta_raw: np.ndarray | None = None
    try:
        try:
            zf = zipfile.ZipFile(target, "r")
        except zipfile.BadZipFile as e:
            raise ValueError(f"{target}: truncated or corrupt weight file: it starts like a zip "
                             f"archive but its central directory is missing or damaged ({e})"
                             ) from None
        with zf:
            infos = zf.infolist()
            seen: set[str] = set()
            for info in infos:
                name = info.filename
                if not name.endswith(".npy"):
                    raise ValueError(f"{target}: not a weight file (.npz): unexpected "
                                     f"entry {name!r} (only .npy arrays are allowed)")
                key = name[:-4]
                if key in seen:
                    raise ValueError(f"{target}: corrupt archive: duplicate entry {key!r}")
                seen.add(key)
                arr = _read_entry(zf, info, target, key)
                if key == METADATA_KEY:
                    meta_raw = arr
                else:
                    arrays[key] = arr
    except ValueError as e:
        if str(e).startswith(target + ":"):
            raise
        raise ValueError(f"{target}: corrupt weight file: {e}") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError,
            RuntimeError, NotImplementedError, KeyError) as e:
        detail = str(e) or type(e).__name__
        raise ValueError(f"{target}: corrupt or truncated weight file: {detail}") from None
    except Exception as e:  # zlib.error and friends from damaged compressed entries
        raise ValueError(f"{target}: corrupt weight file: {type(e).__name__}: {e}") from None

    metadata: dict[str, Any] = {}
    if meta_raw is not None:
        if meta_raw.dtype != np.uint8 or meta_raw.ndim != 1:
            raise ValueError(f"{target}: bad metadata: {METADATA_KEY!r} must be a 1-D uint8 "
                             f"array of UTF-8 JSON, got {meta_raw.dtype} {meta_raw.shape}")
        try:
            metadata = json.loads(meta_raw.tobytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{target}: bad metadata JSON: {e}") from None
        if not isinstance(metadata, dict):
            raise ValueError(f"{target}: bad metadata: expected a JSON object, "
                             f"got {type(metadata).__name__}")
    return arrays, metadata


# ---------------------------------------------------------------------------
# checking a loaded state against what a model expects
# ---------------------------------------------------------------------------

def _expected_spec(name: str, spec: Any) -> tuple[tuple[int, ...], np.dtype | None]:
    """Normalise one ``expected`` entry to ``(shape, dtype-or-None)``."""
    if hasattr(spec, "shape") and hasattr(spec, "dtype"):  # ndarray or similar
        return tuple(int(d) for d in spec.shape), np.dtype(spec.dtype)
    if isinstance(spec, Mapping):
        if "shape" not in spec:
            raise TypeError(f"expected[{name!r}] must have a 'shape' key")
        shape, dtype = spec["shape"], spec.get("dtype")
    elif (isinstance(spec, tuple) and len(spec) == 2
          and isinstance(spec[0], (tuple, list))):
        shape, dtype = spec
    elif isinstance(spec, (tuple, list)):
        shape, dtype = spec, None
    else:
        raise TypeError(f"expected[{name!r}] must be an array, a (shape, dtype) pair, a shape "
                        f"tuple or a dict with 'shape'/'dtype'; got {type(spec).__name__}")
    try:
        shape_t = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        raise TypeError(f"expected[{name!r}] has an invalid shape {shape!r}") from None
    if any(d < 0 for d in shape_t):
        raise ValueError(f"expected[{name!r}] has a negative dimension in {shape_t}")
    return shape_t, (None if dtype is None else np.dtype(dtype))


def _describe(shape: tuple[int, ...], dtype: np.dtype | None) -> str:
    return f"shape {shape}" + ("" if dtype is None else f" {dtype}")


def check_state(expected: Mapping[str, Any], got: Mapping[str, Any],
                path: str | os.PathLike | None = None) -> None:
    """Check that loaded tensors ``got`` match what a model ``expected``.

    ``expected`` maps tensor names to an array (its shape and dtype are used),
    a ``(shape, dtype)`` pair, a bare shape tuple (dtype not checked) or a dict
    with ``"shape"`` and optional ``"dtype"``.  ``got`` maps names to arrays,
    e.g. the first value returned by :func:`load_weights`.

    Raises ``ValueError`` naming the file and the first problem, in the order:
    tensors of ``expected`` (in its order) missing from ``got`` or differing in
    shape or dtype, then tensors of ``got`` that the model does not have.  The
    message also says how many further problems there are.  Returns ``None``
    when everything matches.
    """
    if not isinstance(expected, Mapping):
        raise TypeError(f"expected must be a dict, got {type(expected).__name__}")
    if not isinstance(got, Mapping):
        raise TypeError(f"got must be a dict, got {type(got).__name__}")
    where = "weights" if path is None else _fspath(path)
    problems: list[str] = []
    for name, spec in expected.items():
        shape, dtype = _expected_spec(name, spec)
        if name not in got:
            problems.append(f"missing tensor {name!r} (the model expects "
                            f"{_describe(shape, dtype)})")
            continue
        arr = got[name]
        if not (hasattr(arr, "shape") and hasattr(arr, "dtype")):
            problems.append(f"tensor {name!r} is a {type(arr).__name__}, not an array")
            continue
        gshape, gdtype = tuple(int(d) for d in arr.shape), np.dtype(arr.dtype)
        if gshape != shape:
            problems.append(f"tensor {name!r} has shape {gshape} in the file but the model "
                            f"expects shape {shape}")
        elif dtype is not None and gdtype != dtype:
            problems.append(f"tensor {name!r} has dtype {gdtype} in the file but the model "
                            f"expects dtype {dtype}")
    for name in got:
        if name not in expected:
            arr = got[name]
            what = (f" ({_describe(tuple(arr.shape), np.dtype(arr.dtype))})"
                    if hasattr(arr, "shape") and hasattr(arr, "dtype") else "")
            problems.append(f"unexpected tensor {name!r}{what}, which the model does not have")
    if problems:
        more = len(problems) - 1
        suffix = f" (and {more} more mismatch{'es' if more > 1 else ''})" if more else ""
        raise ValueError(f"{where}: weights do not match the model: {problems[0]}{suffix}")


# ---------------------------------------------------------------------------
# nested state as flat arrays (training checkpoints)
# ---------------------------------------------------------------------------
__all__ += ["flatten_state", "unflatten_state"]

# Key grammar: components joined by "/", the last one followed by "@" and a type tag.  Dict keys
# are percent-encoded (so "/", "@", "#" and "%" never appear raw); int dict keys are "#<int>";
# the empty string is "%%"; list/tuple items are their decimal index.
_TAGS = {"a": "array", "g": "numpy scalar", "f": "float", "i": "int", "b": "bool", "s": "str",
         "n": "None", "d": "dict", "l": "list", "t": "tuple"}


def _encode_key(key, where):
    if isinstance(key, (bool, np.bool_)):
        raise TypeError(f"flatten_state: dict key {key!r} at {where or '<root>'} is a bool; only "
                        f"str and int keys are supported")
    if isinstance(key, (int, np.integer)):
        return f"#{int(key)}"
    if isinstance(key, str):
        return quote(key, safe="") if key else "%%"
    raise TypeError(f"flatten_state: dict key {key!r} at {where or '<root>'} must be a str or "
                    f"an int")


def _decode_key(comp):
    if comp.startswith("#"):
        return int(comp[1:])
    if comp == "%%":
        return ""
    return unquote(comp)


def flatten_state(state: dict) -> dict[str, np.ndarray]:
    """Flatten a state structure (nested dicts with str/int keys, lists, tuples, NumPy arrays and
    scalars, Python numbers, strings, ``None``) into ``{key: numpy.ndarray}`` with no object
    arrays, so it can go into an ``.npz`` file without pickling.  ``unflatten_state`` inverts it
    exactly (values, dtypes and Python types)."""
    if not isinstance(state, dict):
        raise TypeError(f"flatten_state: expected a dict, got {type(state).__name__}")
    out: dict[str, np.ndarray] = {}

    def put(path, tag, arr):
        out[f"{path}@{tag}"] = arr

    def walk(x, path):
        if isinstance(x, dict):
            if path is not None:
                put(path, "d", np.zeros(0, dtype=np.int8))
            for k, v in x.items():
                comp = _encode_key(k, path)
                walk(v, comp if path is None else f"{path}/{comp}")
        elif isinstance(x, (list, tuple)):
            put(path, "l" if isinstance(x, list) else "t", np.array(len(x), dtype=np.int64))
            for i, v in enumerate(x):
                walk(v, f"{path}/{i}")
        elif isinstance(x, np.ndarray):
            if x.dtype.hasobject:
                raise TypeError(f"flatten_state: object array at {path} cannot be stored "
                                f"without pickling")
            put(path, "a", np.array(x, copy=True))
        elif isinstance(x, np.generic):
            if x.dtype.hasobject:
                raise TypeError(f"flatten_state: object scalar at {path}")
            put(path, "g", np.array(x))
        elif isinstance(x, bool):
            put(path, "b", np.array(x, dtype=np.bool_))
        elif isinstance(x, int):
            if not -2 ** 63 <= x < 2 ** 63:
                raise OverflowError(f"flatten_state: int at {path} does not fit in 64 bits")
            put(path, "i", np.array(x, dtype=np.int64))
        elif isinstance(x, float):
            put(path, "f", np.array(x, dtype=np.float64))
        elif isinstance(x, str):
            put(path, "s", np.array(x, dtype=np.str_))
        elif x is None:
            put(path, "n", np.zeros(0, dtype=np.int8))
        else:
            raise TypeError(f"flatten_state: cannot store {type(x).__name__} at {path}")

    walk(state, None)
    return out


def unflatten_state(flat) -> dict:
    """Inverse of ``flatten_state``: accepts its output (or an ``np.load``-ed ``.npz`` with the
    same keys, in any order)."""
    root = {"tag": "d", "value": None, "children": {}}
    for key in flat.keys():
        if not isinstance(key, str) or "@" not in key:
            raise ValueError(f"unflatten_state: malformed key {key!r}")
        path, tag = key.rsplit("@", 1)
        if tag not in _TAGS or not path:
            raise ValueError(f"unflatten_state: malformed key {key!r}")
        node = root
        for comp in path.split("/"):
            node = node["children"].setdefault(comp, {"tag": None, "value": None,
                                                      "children": {}})
        if node["tag"] is not None:
            raise ValueError(f"unflatten_state: two entries for {path!r}")
        node["tag"], node["value"] = tag, np.asarray(flat[key])

    def build(node, path):
        tag, arr, children = node["tag"], node["value"], node["children"]
        if tag is None:
            raise ValueError(f"unflatten_state: no type entry for {path!r}")
        if tag not in ("d", "l", "t") and children:
            raise ValueError(f"unflatten_state: {path!r} is a {_TAGS[tag]} but has children")
        if tag == "d":
            return {_decode_key(c): build(n, f"{path}/{c}" if path else c)
                    for c, n in children.items()}
        if tag in ("l", "t"):
            length = int(arr)
            if set(children) != {str(i) for i in range(length)}:
                raise ValueError(f"unflatten_state: {path!r} should have items 0..{length - 1}")
            items = [build(children[str(i)], f"{path}/{i}") for i in range(length)]
            return items if tag == "l" else tuple(items)
        if tag == "a":
            return np.array(arr, copy=True)
        if tag == "g":
            return arr[()]
        if tag == "f":
            return float(arr)
        if tag == "i":
            return int(arr)
        if tag == "b":
            return bool(arr)
        if tag == "s":
            return str(arr[()])
        return None

    return build(root, "")
