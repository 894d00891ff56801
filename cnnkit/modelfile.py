"""One-file models and weight files in safetensors or ``.npz``.

A model file is a `safetensors <https://huggingface.co/docs/safetensors>`_ file: every parameter
and buffer under its structural name (:mod:`cnnkit.state`), and in the header's metadata the
model's config (:func:`cnnkit.config.model_to_config`) as JSON.  Loading runs no code (the
config names registered layer types, nothing else) and any safetensors reader can open the
file.  The header metadata (a str -> str map, as safetensors requires) holds:

* ``"cnnkit.format"``: ``"model"`` (architecture and weights) or ``"weights"``;
* ``"cnnkit.config"``: the model config as JSON (model files only);
* ``"cnnkit.metadata"``: the rest of cnnkit's metadata as a JSON object (version, naming
  scheme, the user's metadata such as training results).

Weight files may also be ``.npz`` (see :mod:`cnnkit.io`); a model saved under a ``.npz`` name
keeps its config as a JSON string under the metadata key ``"config"``.  Every write goes
through :func:`cnnkit.io.atomic_open` (temporary file in the same folder, fsync, rename).
"""
from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from .io import _check_file, _fspath, atomic_open
from .io import load_weights as _load_npz
from .io import save_weights as _save_npz

__all__ = ["save_model", "load_model", "save_weights_file", "load_weights_file",
           "save_safetensors", "load_safetensors", "ModelFileError"]

FORMAT_KEY = "cnnkit.format"
CONFIG_KEY = "cnnkit.config"
METADATA_KEY = "cnnkit.metadata"
#: metadata keys cnnkit sets itself when saving weights (and "config" too for a model)
_RESERVED = ("weight_names", "layer_keys")
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")


class ModelFileError(ValueError):
    """A model or weight file that cannot be read; the message starts with the file name."""


def _safetensors():
    try:
        import safetensors.numpy as stn
    except ImportError as exc:  # a declared dependency, but say what to install if absent
        raise ImportError("reading and writing safetensors files needs the 'safetensors' "
                          f"package (pip install safetensors): {exc}") from None
    return stn


# ------------------------------------------------------------------------ safetensors
def save_safetensors(path, arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str]
                     | None = None) -> None:
    """Write ``arrays`` (name -> numeric NumPy array) and the str -> str ``metadata`` to a
    safetensors file, atomically."""
    target = _fspath(path)
    if not isinstance(arrays, Mapping):
        raise TypeError(f"{target}: arrays must be a dict of name -> array, got "
                        f"{type(arrays).__name__}")
    tensors = {}
    for key, value in arrays.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"{target}: tensor names must be non-empty str, got {key!r}")
        if not isinstance(value, np.ndarray):
            raise TypeError(f"{target}: tensor {key!r} must be a numpy array, got "
                            f"{type(value).__name__}")
        if value.dtype.kind not in "biuf" or value.dtype.fields is not None:
            raise TypeError(f"{target}: tensor {key!r} has dtype {value.dtype}; safetensors "
                            "holds bool, integer and float arrays")
        # not np.ascontiguousarray: it turns 0-d arrays (num_batches_tracked) into 1-d
        tensors[key] = value if value.flags.c_contiguous else np.array(value, order="C")
    if metadata is not None:
        if not isinstance(metadata, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError(f"{target}: safetensors metadata must be a dict of str -> str")
        metadata = dict(metadata)
    data = _safetensors().save(tensors, metadata)
    with atomic_open(target, "wb") as f:
        f.write(data)


def _read_bytes(target: str, what: str) -> bytes:
    _check_file(target, what, ModelFileError)
    try:
        with open(target, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ModelFileError(f"{target}: cannot read the {what}: {exc}") from None


def _parse_safetensors(target: str, data: bytes) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    if len(data) < 8:
        raise ModelFileError(f"{target}: not a safetensors file: "
                             + ("the file is empty" if not data else
                                f"only {len(data)} bytes, shorter than the 8-byte header size"))
    (size,) = struct.unpack("<Q", data[:8])
    if size > len(data) - 8:
        raise ModelFileError(f"{target}: truncated or not a safetensors file: the header "
                             f"claims {size} bytes but the file holds {len(data) - 8} after "
                             "the size field")
    try:
        header = json.loads(data[8:8 + size].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{target}: not a safetensors file: its header is not JSON "
                             f"({exc})") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{target}: not a safetensors file: its header is not a JSON "
                             "object")
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ModelFileError(f"{target}: corrupt safetensors file: __metadata__ must map str "
                             "to str")
    try:
        loaded = _safetensors().load(data)
    except Exception as exc:  # safetensors' own error type; say which file
        raise ModelFileError(f"{target}: corrupt or truncated safetensors file: {exc}") from None
    # own writable copies, so the file's buffer is not kept alive by the model
    return {k: np.array(v, copy=True) for k, v in loaded.items()}, meta


def load_safetensors(path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a safetensors file: ``(arrays, header metadata)``.  Errors name the file."""
    target = _fspath(path)
    return _parse_safetensors(target, _read_bytes(target, "safetensors file"))


# ------------------------------------------------------------------------ helpers
def _is_zip(target: str) -> bool:
    try:
        with open(target, "rb") as f:
            return f.read(4) in _ZIP_MAGICS
    except OSError:
        return False


def _writes_npz(target: str, config) -> bool:
    """Weights go to ``.npz`` unless the name ends in ``.safetensors`` (as cnnkit 0.1 wrote any
    name); a model goes to safetensors unless the name ends in ``.npz``."""
    name = target.lower()
    return name.endswith(".npz") if config is not None else not name.endswith(".safetensors")


def _user_metadata(metadata, target, reserved) -> dict:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise TypeError(f"{target}: metadata must be a dict or None, got "
                        f"{type(metadata).__name__}")
    for k in metadata:
        if not isinstance(k, str):
            raise TypeError(f"{target}: metadata keys must be str, got {k!r}")
    clash = [k for k in metadata if k in reserved]
    if clash:
        raise ValueError(f"{target}: metadata keys {clash} are set by cnnkit itself")
    return dict(metadata)


def _json(value, target) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{target}: metadata is not JSON-serialisable: {exc}") from None


def _write(model, target, metadata, config):
    from . import __version__
    from .state import file_metadata, state_dict

    reserved = _RESERVED + (() if config is None else ("config",))
    meta = {"cnnkit_version": __version__, **file_metadata(model)}
    meta.update(_user_metadata(metadata, target, reserved))
    arrays = state_dict(model)
    if _writes_npz(target, config):
        if config is not None:
            meta["config"] = _json(config, target)
        _save_npz(target, arrays, meta)
        return
    header = {FORMAT_KEY: "weights" if config is None else "model",
              METADATA_KEY: _json(meta, target)}
    if config is not None:
        header[CONFIG_KEY] = _json(config, target)
    save_safetensors(target, arrays, header)


def _read(target: str) -> tuple[dict[str, np.ndarray], dict[str, Any], str | None]:
    """``(arrays, cnnkit metadata, config JSON or None)`` of a weight or model file."""
    if not os.path.exists(target):
        raise FileNotFoundError(f"{target}: file not found")
    if _is_zip(target):
        arrays, meta = _load_npz(target)
        config = meta.get("config")
        if config is not None and not isinstance(config, str):
            raise ModelFileError(f"{target}: bad metadata: 'config' must be a JSON string")
        return arrays, meta, config
    arrays, header = load_safetensors(target)
    meta: dict[str, Any] = {}
    if METADATA_KEY in header:
        try:
            meta = json.loads(header[METADATA_KEY])
        except json.JSONDecodeError as exc:
            raise ModelFileError(f"{target}: bad {METADATA_KEY!r} metadata: {exc}") from None
        if not isinstance(meta, dict):
            raise ModelFileError(f"{target}: bad {METADATA_KEY!r} metadata: not a JSON object")
    return arrays, meta, header.get(CONFIG_KEY)


def _check_model(model):
    from .graph import Model

    if not isinstance(model, Model):
        raise TypeError(f"expected a cnnkit Model or Sequential, got {type(model).__name__}")


# ------------------------------------------------------------------------ public
def save_weights_file(model, path, metadata: Mapping | None = None) -> None:
    """Write ``model``'s state dict (structural names) to ``path``: safetensors for a name
    ending in ``.safetensors``, otherwise ``.npz``.  ``metadata`` is an optional JSON-serialisable dict."""
    _check_model(model)
    target = _fspath(path)
    _write(model, target, metadata, None)


def load_weights_file(model, path) -> dict:
    """Load a weight or model file (either format, told apart by content) into ``model``;
    returns its cnnkit metadata."""
    _check_model(model)
    from .state import load_file_state

    target = _fspath(path)
    arrays, meta, _ = _read(target)
    load_file_state(model, arrays, meta, target)
    return meta


def save_model(model, path, metadata: Mapping | None = None) -> None:
    """Write ``model`` (config and all weights and buffers) to one file, atomically: a
    safetensors file, or an ``.npz`` for that suffix.  ``metadata`` (JSON-serialisable dict,
    e.g. training results) is stored alongside."""
    _check_model(model)
    target = _fspath(path)
    from .config import model_to_config

    config = model_to_config(model)
    _write(model, target, metadata, config)


def load_model(path):
    """Rebuild a model saved by ``model.save(path)``: its architecture from the config in the
    file, then its weights and buffers.  Runs no code from the file."""
    from .config import ConfigError, model_from_config
    from .state import load_file_state, restore_layer_keys

    target = _fspath(path)
    arrays, meta, config = _read(target)
    if config is None:
        raise ModelFileError(f"{target}: not a cnnkit model file: it holds no model config "
                             "(weights alone load into a model built in code with "
                             "model.load_weights())")
    try:
        cfg = json.loads(config)
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{target}: the model config in the file is not JSON: {exc}"
                             ) from None
    if not isinstance(cfg, dict):
        raise ModelFileError(f"{target}: the model config in the file is not a JSON object")
    try:
        model = model_from_config(cfg)
    except (ConfigError, ValueError, TypeError, KeyError) as exc:
        raise ModelFileError(f"{target}: cannot build the model from the file's config: "
                             f"{exc}") from None
    restore_layer_keys(model, meta, target)
    load_file_state(model, arrays, meta, target)
    return model
