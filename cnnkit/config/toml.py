"""TOML for configs: a small writer for config-shaped data (tables, arrays of tables, scalars,
arrays) and the reader, which maps TOML's stand-in for null back to None."""
from __future__ import annotations

import json
import math
import re

from ._locator import ConfigError


def parse_toml(text: str, where: str = "") -> dict:
    """The data of TOML ``text`` (``{none = true}`` read as None); ``where`` prefixes errors."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise ConfigError(f"{where}reading TOML on Python < 3.11 needs the 'tomli' "
                              "package (pip install tomli), or use a .json config") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}invalid TOML: {exc}") from None
    return _decode_none(data)


_NONE_MARK = {"none": True}


def _decode_none(value):
    """TOML has no null: ``{none = true}`` stands for None (JSON's null)."""
    if isinstance(value, dict):
        if value == _NONE_MARK:
            return None
        return {k: _decode_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode_none(v) for v in value]
    return value


# ---- a small TOML emitter for config-shaped data (tables, arrays of tables, scalars, arrays)
_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(k):
    if not isinstance(k, str):
        raise TypeError(f"TOML keys must be strings, got {k!r}")
    return k if _BARE.match(k) else json.dumps(k)


def _toml_value(v):
    if v is None:
        return "{ none = true }"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        r = repr(v)
        return r if any(c in r for c in ".eEn") else r + ".0"
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        items = [f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()]
        return "{ " + ", ".join(items) + " }" if items else "{}"
    raise TypeError(f"cannot write {v!r} ({type(v).__name__}) as TOML")


def _is_table_array(v):
    return isinstance(v, list) and v and all(isinstance(x, dict) for x in v)


def dumps_toml(cfg: dict) -> str:
    """Top-level scalars first, then tables (``[name]``) and arrays of tables (``[[name]]``);
    inside an array-of-tables entry nested tables are written inline.  TOML has no null:
    ``None`` is written ``{ none = true }``, which :func:`loads` reads back as None."""
    lines: list[str] = []

    def emit(d, path, in_array):
        simple = [(k, v) for k, v in d.items()
                  if not (isinstance(v, dict) and not in_array)
                  and not (_is_table_array(v) and not in_array)]
        for k, v in simple:
            lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
        if in_array:
            return
        for k, v in d.items():
            sub = path + [_toml_key(k)]
            if isinstance(v, dict):
                lines.append("")
                lines.append(f"[{'.'.join(sub)}]")
                emit(v, sub, False)
            elif _is_table_array(v):
                for item in v:
                    lines.append("")
                    lines.append(f"[[{'.'.join(sub)}]]")
                    emit(item, sub, True)

    emit(cfg, [], False)
    return "\n".join(lines).lstrip("\n") + "\n"
