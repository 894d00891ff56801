"""Config text and files: TOML or JSON chosen by the file's extension; writes are atomic."""
from __future__ import annotations

import json
import os

from ._locator import Config, ConfigError
from .model import model_from_config, model_to_config
from .toml import dumps_toml, parse_toml


def loads(text: str, fmt: str, *, path=None) -> Config:
    """Parse config ``text`` in format ``"toml"`` or ``"json"``."""
    where = f"{path}: " if path is not None else ""
    if fmt == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path or '<json>'}:{exc.lineno}: invalid JSON: {exc.msg}") \
                from None
    elif fmt == "toml":
        data = parse_toml(text, where)
    else:
        raise ValueError(f"config format must be 'toml' or 'json', got {fmt!r}")
    if not isinstance(data, dict):
        raise ConfigError(f"{where}a config must be a table (object), got {type(data).__name__}")
    return Config(data, path=path, text=text, fmt=fmt)


def _format_of(path):
    ext = os.path.splitext(str(path))[1].lower()
    if ext == ".toml":
        return "toml"
    if ext == ".json":
        return "json"
    raise ValueError(f"{path}: a config file must end in .toml or .json")


def load_config(path) -> Config:
    """Read a TOML (``.toml``) or JSON (``.json``) config file."""
    fmt = _format_of(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: config file not found") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc}") from None
    return loads(text, fmt, path=str(path))


def load_model(path, *, rng=None, dtype=None):
    """``model_from_config(load_config(path))``."""
    return model_from_config(load_config(path), rng=rng, dtype=dtype)


def dumps(cfg: dict, fmt: str = "toml") -> str:
    """A config dict as TOML or JSON text."""
    if fmt == "json":
        return json.dumps(cfg, indent=2, allow_nan=False) + "\n"
    if fmt == "toml":
        return dumps_toml(cfg)
    raise ValueError(f"config format must be 'toml' or 'json', got {fmt!r}")


def save_config(model_or_config, path, *, training: dict | None = None) -> None:
    """Write a model's config (or a config dict) to ``path`` (.toml or .json), atomically;
    ``training`` adds a training section."""
    from ..io import atomic_write_text

    fmt = _format_of(path)
    cfg = (dict(model_or_config) if isinstance(model_or_config, dict)
           else model_to_config(model_or_config))
    if training is not None:
        cfg["training"] = training
    atomic_write_text(path, dumps(cfg, fmt))
