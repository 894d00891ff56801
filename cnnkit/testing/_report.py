"""What :func:`cnnkit.testing.check_variant` returns: a :class:`Report` of :class:`Failure` rows."""
from __future__ import annotations

from dataclasses import dataclass, field

@dataclass
class Failure:
    """One failed check.  ``check`` is what was checked (``selection``, ``shape``, ``dtype``,
    ``mutation``, ``read-only``, ``inference``, ``forward``, ``backward``, ``gradcheck``,
    ``capabilities``, ``error``, ``setup``); ``output`` what was wrong (``y``, ``dx``,
    ``d<param>``, ``ctx``, or the mutated input ``x``, ``dy``, ``<param>``, ``config``)."""

    check: str
    message: str
    case: str | None = None
    layer_kwargs: dict | None = None
    input_shape: tuple | None = None
    dtype: str | None = None
    output: str | None = None
    max_abs_err: float | None = None
    max_rel_err: float | None = None
    tol: float | None = None

    def __str__(self):
        where = ", ".join(str(p) for p in (self.case, self.dtype, self.output) if p)
        return f"[{self.check}] {where}: {self.message}"


@dataclass
class Report:
    """Outcome of :func:`check_variant`."""

    layer_type: str
    variant: str
    plugin: str | None = None
    reference: str | None = None
    failures: list[Failure] = field(default_factory=list)
    checks_run: int = 0
    #: (case, dtype, reason) of the cases the variant does not serve (refused by selection)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)
    #: why nothing was run: the variant cannot run here at all (the CPU lacks a feature it
    #: needs, or its compiled module was not built); ``None`` when it was checked
    unavailable: str | None = None

    @property
    def ok(self) -> bool:
        return not self.failures

    def __bool__(self):
        return self.ok

    def __str__(self):
        head = (f"conformance of {self.layer_type}/{self.variant}"
                + (f" (plugin {self.plugin!r})" if self.plugin else ""))
        if self.unavailable is not None and self.ok:
            return head + f": not run: {self.unavailable}"
        head += f" against {self.reference or 'no reference (self-consistency only)'}: "
        if self.ok:
            return head + f"{self.checks_run} checks passed, {len(self.skipped)} refused cases"
        lines = [head + f"{len(self.failures)} failed of {self.checks_run} checks"]
        cols = ("#", "check", "case", "dtype", "output", "max abs err", "max rel err", "tol")
        rows = []
        for i, f in enumerate(self.failures[:_MAX_ROWS], 1):
            rows.append((str(i), f.check, f.case or "-", f.dtype or "-", f.output or "-",
                         _num(f.max_abs_err), _num(f.max_rel_err), _num(f.tol)))
        widths = [max(len(c), *(len(r[k]) for r in rows)) for k, c in enumerate(cols)]
        lines.append("  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip())
        for row, f in zip(rows, self.failures):
            lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
            lines.append(" " * (widths[0] + 2) + f.message)
        if len(self.failures) > _MAX_ROWS:
            lines.append(f"... and {len(self.failures) - _MAX_ROWS} more failures")
        return "\n".join(lines)


_MAX_ROWS = 40


def _num(v):
    return "-" if v is None else f"{v:.3g}"


