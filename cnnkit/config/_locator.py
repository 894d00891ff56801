"""Errors that point into the config file: :class:`ConfigError`, the :class:`Config` dict that
remembers its text, and the locator that finds the line of an entry in that text."""
from __future__ import annotations

import json
import re


class ConfigError(ValueError):
    """A config that cannot be turned into a model or a training run."""


class Config(dict):
    """A config dict that remembers the file it came from (``path``), its text (``text``) and
    its format (``"toml"``/``"json"``), so that errors can give line numbers."""

    def __init__(self, data=(), *, path=None, text=None, fmt=None):
        super().__init__(data)
        self.path, self.text, self.fmt = path, text, fmt


# ----------------------------------------------------------------------------- locating entries
class _Locator:
    """Finds the line of a config entry (a layer, a key in it, a top-level key) in the text."""

    def __init__(self, cfg):
        self.path = getattr(cfg, "path", None)
        self.text = getattr(cfg, "text", None)
        self.fmt = getattr(cfg, "fmt", None)
        self._spans = None

    def _layer_spans(self):
        """(start, end) character offsets of each entry of ``layers`` in the text."""
        if self._spans is not None:
            return self._spans
        spans: list[tuple[int, int]] = []
        text = self.text or ""
        if self.fmt == "toml":
            heads = [m.start() for m in re.finditer(r"(?m)^[ \t]*\[\[[ \t]*layers[ \t]*\]\]", text)]
            for i, start in enumerate(heads):
                nxt = re.compile(r"(?m)^[ \t]*\[").search(text, start + 1)
                spans.append((start, nxt.start() if nxt else len(text)))
        elif self.fmt == "json":
            m = re.search(r'"layers"\s*:\s*\[', text)
            if m:
                spans = _json_array_items(text, m.end())
        self._spans = spans
        return spans

    def line(self, index=None, key=None, name=None, section=None):
        """Line number (1-based) of layer ``index`` (its ``key`` line if given), or of a
        top-level ``key`` (in ``section`` if given); None when not found."""
        text = self.text
        if not text:
            return None
        if index is not None:
            spans = self._layer_spans()
            if index < len(spans):
                start, end = spans[index]
            else:  # inline arrays: fall back to the name
                start, end = 0, len(text)
                if name is None:
                    return None
                key = "name"
            if key is None and name is not None:
                key = "name"  # an entry is pointed at by its name line
            if key is not None:
                pat = (rf'(?m)^[ \t]*"?{re.escape(key)}"?[ \t]*=' if self.fmt == "toml"
                       else rf'"{re.escape(key)}"\s*:')
                if key == "name" and name is not None and (start, end) == (0, len(text)):
                    pat = (rf'(?m)\bname[ \t]*=[ \t]*["\']{re.escape(name)}["\']'
                           if self.fmt == "toml" else rf'"name"\s*:\s*"{re.escape(name)}"')
                m = re.compile(pat).search(text, start, end)
                if m:
                    return text.count("\n", 0, m.start()) + 1
            if (start, end) == (0, len(text)):
                return None
            return text.count("\n", 0, start) + 1
        if key is not None:
            start, end = 0, len(text)
            if section is not None and self.fmt == "toml":
                m = re.search(rf"(?m)^[ \t]*\[[ \t]*{re.escape(section)}[ \t]*\]", text)
                if m:
                    start = m.start()
                    nxt = re.compile(r"(?m)^[ \t]*\[").search(text, m.end())
                    key_m = re.compile(rf'(?m)^[ \t]*"?{re.escape(key)}"?[ \t]*=').search(
                        text, start, nxt.start() if nxt else end)
                    if key_m:
                        return text.count("\n", 0, key_m.start()) + 1
                    return text.count("\n", 0, start) + 1
            k = re.escape(key)
            pat = (rf'(?m)^[ \t]*"?{k}"?[ \t]*=|^[ \t]*\[+[ \t]*{k}[ \t]*\]'
                   if self.fmt == "toml" else rf'"{k}"\s*:')
            m = re.compile(pat).search(text, start, end)
            if m:
                return text.count("\n", 0, m.start()) + 1
        return None

    def prefix(self, line):
        if self.path is not None:
            return f"{self.path}:{line}: " if line else f"{self.path}: "
        return f"line {line}: " if line else ""


def _json_array_items(text, pos):
    """Spans of the top-level items of the JSON array whose '[' ends at ``pos``."""
    spans, depth, start, i, n = [], 0, None, pos, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif c in "{[":
            if depth == 0:
                start = i
            depth += 1
        elif c in "}]":
            if depth == 0:
                break
            depth -= 1
            if depth == 0 and start is not None:
                spans.append((start, i + 1))
                start = None
        i += 1
    return spans


def _entry_label(index, entry):
    name = entry.get("name") if isinstance(entry, dict) else None
    typ = entry.get("type") if isinstance(entry, dict) else None
    label = f"layers[{index}]"
    if isinstance(name, str):
        label += f" {json.dumps(name)}"
    if isinstance(typ, str):
        label += f" ({typ})"
    return label
