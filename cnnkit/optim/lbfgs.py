"""Limited-memory BFGS with an optional strong-Wolfe line search (``torch.optim.LBFGS``)."""
from __future__ import annotations

import numpy as np

from .base import Optimizer, _check_hyper, _check_int, _trainable


# --------------------------------------------------------------------------- L-BFGS
def _cubic_minimum(x1, f1, g1, x2, f2, g2, bounds=None):
    """Minimiser of the cubic interpolating (x1, f1, f1'=g1) and (x2, f2, f2'=g2), clamped to
    ``bounds`` (default: the interval between x1 and x2); the interval's middle when the cubic
    has no real minimiser."""
    lo, hi = bounds if bounds is not None else ((x1, x2) if x1 <= x2 else (x2, x1))
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    disc = d1 ** 2 - g1 * g2
    if disc >= 0:
        d2 = np.sqrt(disc)
        if x1 <= x2:
            x = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
        else:
            x = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
        return min(max(x, lo), hi)
    return (lo + hi) / 2.0


def _strong_wolfe_search(evaluate, t, d, f, g, gtd, *, c1=1e-4, c2=0.9, tolerance_change=1e-9,
                         max_ls=25):
    """Line search along ``d`` from the current point (loss ``f``, gradient ``g``, directional
    derivative ``gtd``) for a step ``t`` satisfying the strong Wolfe conditions:
    sufficient decrease ``f(t) <= f + c1 t gtd`` and curvature ``|f'(t)| <= -c2 gtd``.

    First brackets an acceptable step (extrapolating with a safeguarded cubic), then zooms into
    the bracket with cubic interpolation, as minFunc and ``torch.optim.LBFGS`` do.  ``evaluate(t)``
    returns ``(loss, flat gradient)`` at ``x + t d`` (leaving the parameters at ``x``).  Returns
    ``(loss, gradient, t, number of evaluations)``.
    """
    d_norm = np.abs(d).max()
    g = g.copy()
    f_new, g_new = evaluate(t)
    n_evals = 1
    gtd_new = g_new.dot(d)
    t_prev, f_prev, g_prev, gtd_prev = 0, f, g, gtd
    done = False
    it = 0
    # -- bracketing phase
    while it < max_ls:
        if f_new > f + c1 * t * gtd or (it > 1 and f_new >= f_prev):
            bracket, bf = [t_prev, t], [f_prev, f_new]
            bg, bgtd = [g_prev, g_new.copy()], [gtd_prev, gtd_new]
            break
        if abs(gtd_new) <= -c2 * gtd:
            bracket, bf, bg, bgtd = [t], [f_new], [g_new], [gtd_new]
            done = True
            break
        if gtd_new >= 0:
            bracket, bf = [t_prev, t], [f_prev, f_new]
            bg, bgtd = [g_prev, g_new.copy()], [gtd_prev, gtd_new]
            break
        # extrapolate: a cubic step between 1.01 t and 10 t
        lo, hi = t + 0.01 * (t - t_prev), t * 10
        t_old = t
        t = _cubic_minimum(t_prev, f_prev, gtd_prev, t, f_new, gtd_new, bounds=(lo, hi))
        t_prev, f_prev, g_prev, gtd_prev = t_old, f_new, g_new.copy(), gtd_new
        f_new, g_new = evaluate(t)
        n_evals += 1
        gtd_new = g_new.dot(d)
        it += 1
    if it == max_ls:
        bracket, bf, bg = [0, t], [f, f_new], [g, g_new]
        bgtd = None  # not needed: the zoom phase has no evaluations left
    # -- zoom phase
    insufficient = False
    low, high = (0, 1) if bf[0] <= bf[-1] else (1, 0)
    while not done and it < max_ls:
        if abs(bracket[1] - bracket[0]) * d_norm < tolerance_change:
            break
        t = _cubic_minimum(bracket[0], bf[0], bgtd[0], bracket[1], bf[1], bgtd[1])
        # keep away from the bracket's ends unless the previous trial was already there
        b_max, b_min = max(bracket), min(bracket)
        margin = 0.1 * (b_max - b_min)
        if min(b_max - t, t - b_min) < margin:
            if insufficient or t >= b_max or t <= b_min:
                t = b_max - margin if abs(t - b_max) < abs(t - b_min) else b_min + margin
                insufficient = False
            else:
                insufficient = True
        else:
            insufficient = False
        f_new, g_new = evaluate(t)
        n_evals += 1
        gtd_new = g_new.dot(d)
        it += 1
        if f_new > f + c1 * t * gtd or f_new >= bf[low]:
            bracket[high], bf[high], bg[high], bgtd[high] = t, f_new, g_new.copy(), gtd_new
            low, high = (0, 1) if bf[0] <= bf[1] else (1, 0)
        else:
            if abs(gtd_new) <= -c2 * gtd:
                done = True
            elif gtd_new * (bracket[high] - bracket[low]) >= 0:
                bracket[high], bf[high] = bracket[low], bf[low]
                bg[high], bgtd[high] = bg[low], bgtd[low]
            bracket[low], bf[low], bg[low], bgtd[low] = t, f_new, g_new.copy(), gtd_new
    return bf[low], bg[low], bracket[low], n_evals


class LBFGS(Optimizer):
    """Limited-memory BFGS (``torch.optim.LBFGS``), for full-batch problems.

    ``step(closure)`` runs up to ``max_iter`` iterations (and ``max_eval`` evaluations);
    ``closure()`` must zero the gradients, re-evaluate the model, fill the gradients (backward)
    and return the loss.  The search direction comes from the two-loop recursion over the last
    ``history_size`` curvature pairs; the step is ``lr`` (``min(1, 1/|g|_1) * lr`` on the very
    first iteration) or, with ``line_search_fn="strong_wolfe"``, found by a strong-Wolfe line
    search with cubic interpolation.  Iterations stop when the largest gradient entry is
    ``<= tolerance_grad`` or the step / loss change is below ``tolerance_change``.

    All parameters are handled as one flat vector in their common dtype.  The history lives in
    ``global_state`` and is saved by ``state_dict()``.
    """

    needs_closure = True

    def __init__(self, model_or_params, lr=1.0, max_iter=20, max_eval=None, tolerance_grad=1e-7,
                 tolerance_change=1e-9, history_size=100, line_search_fn=None):
        if max_eval is None and isinstance(max_iter, (int, np.integer)) \
                and not isinstance(max_iter, bool):
            max_eval = int(max_iter) * 5 // 4
        super().__init__(model_or_params, lr=lr, max_iter=max_iter, max_eval=max_eval,
                         tolerance_grad=tolerance_grad, tolerance_change=tolerance_change,
                         history_size=history_size, line_search_fn=line_search_fn)

    def _validate(self, h):
        owner = type(self).__name__
        h["lr"] = _check_hyper(owner, "lr", h["lr"])
        h["max_iter"] = _check_int(owner, "max_iter", h["max_iter"])
        h["max_eval"] = _check_int(owner, "max_eval", h["max_eval"])
        h["tolerance_grad"] = _check_hyper(owner, "tolerance_grad", h["tolerance_grad"])
        h["tolerance_change"] = _check_hyper(owner, "tolerance_change", h["tolerance_change"])
        h["history_size"] = _check_int(owner, "history_size", h["history_size"])
        if h["line_search_fn"] not in (None, "strong_wolfe"):
            raise ValueError(f"{owner}: line_search_fn must be None or 'strong_wolfe', got "
                             f"{h['line_search_fn']!r}")
        return h

    def _check_global_state(self, glob):
        owner = type(self).__name__
        n = sum(p.value.size for p in self.params)
        for key in ("d", "prev_flat_grad"):
            v = glob.get(key)
            if v is not None and (not isinstance(v, np.ndarray) or v.shape != (n,)):
                raise ValueError(f"{owner}: state {key!r} must be a vector of {n} values")
        dirs, stps, ro = (glob.get(k, []) for k in ("old_dirs", "old_stps", "ro"))
        if not (isinstance(dirs, list) and isinstance(stps, list) and isinstance(ro, list)
                and len(dirs) == len(stps) == len(ro)):
            raise ValueError(f"{owner}: old_dirs, old_stps and ro must be lists of one length")
        for v in dirs + stps:
            if not isinstance(v, np.ndarray) or v.shape != (n,):
                raise ValueError(f"{owner}: history vectors must have {n} values")

    # -- flat views of the parameters
    def _dtype(self):
        return np.result_type(*(p.value.dtype for p in self.params))

    def _flat_grad(self):
        dtype = self._dtype()
        parts = []
        for p in self.params:
            g = p.grad
            w = p.value
            if g is None or not _trainable(p):  # a zero gradient leaves frozen values alone
                parts.append(np.zeros(w.size, dtype=dtype))
            else:
                g = np.asarray(g)
                if g.shape != w.shape:
                    raise ValueError(f"LBFGS: gradient of {p.name} has shape {g.shape}, "
                                     f"parameter has {w.shape}")
                parts.append(g.reshape(-1).astype(dtype, copy=False))
        return np.concatenate(parts)

    def _add(self, t, d):
        offset = 0
        for p in self.params:
            w = p.value
            n = w.size
            w += (t * d[offset:offset + n]).reshape(w.shape).astype(w.dtype, copy=False)
            offset += n

    def _snapshot(self):
        return [p.value.copy() for p in self.params]

    def _restore(self, values):
        for p, v in zip(self.params, values):
            p.value[...] = v

    def step(self, closure=None):
        """One L-BFGS optimisation step (up to ``max_iter`` iterations); returns the loss the
        first call of ``closure`` gave."""
        if closure is None or not callable(closure):
            raise TypeError("LBFGS: step() needs a closure that zeroes the gradients, "
                            "re-evaluates the model, fills the gradients and returns the loss")
        h = self.hyper
        lr, max_iter, max_eval = h["lr"], h["max_iter"], h["max_eval"]
        tol_grad, tol_change = h["tolerance_grad"], h["tolerance_change"]
        history_size = h["history_size"]
        st = self.global_state
        st.setdefault("func_evals", 0)
        st.setdefault("n_iter", 0)
        self.steps += 1

        orig_loss = closure()
        loss = float(orig_loss)
        evals = 1
        st["func_evals"] += 1
        flat_grad = self._flat_grad()
        if np.abs(flat_grad).max() <= tol_grad:
            return orig_loss

        d, t = st.get("d"), st.get("t")
        old_dirs, old_stps, ro = st.get("old_dirs"), st.get("old_stps"), st.get("ro")
        h_diag = st.get("H_diag")
        prev_flat_grad, prev_loss = st.get("prev_flat_grad"), st.get("prev_loss")

        n_iter = 0
        while n_iter < max_iter:
            n_iter += 1
            st["n_iter"] += 1
            # -- search direction
            if st["n_iter"] == 1:
                d = -flat_grad
                old_dirs, old_stps, ro = [], [], []
                h_diag = 1
            else:
                y = flat_grad - prev_flat_grad
                s = d * t
                ys = y.dot(s)
                if ys > 1e-10:  # keep only pairs with positive curvature
                    if len(old_dirs) == history_size:
                        old_dirs.pop(0)
                        old_stps.pop(0)
                        ro.pop(0)
                    old_dirs.append(y)
                    old_stps.append(s)
                    ro.append(1.0 / ys)
                    h_diag = ys / y.dot(y)
                # two-loop recursion: d = -H g
                k = len(old_dirs)
                al = [None] * k
                q = -flat_grad
                for i in range(k - 1, -1, -1):
                    al[i] = old_stps[i].dot(q) * ro[i]
                    q += -al[i] * old_dirs[i]
                d = q * h_diag
                for i in range(k):
                    be_i = old_dirs[i].dot(d) * ro[i]
                    d += (al[i] - be_i) * old_stps[i]
            prev_flat_grad = flat_grad.copy()
            prev_loss = loss
            # -- step length
            if st["n_iter"] == 1:
                t = min(1.0, 1.0 / np.abs(flat_grad).sum()) * lr
            else:
                t = lr
            gtd = flat_grad.dot(d)
            if gtd > -tol_change:  # not a descent direction
                break
            ls_evals = 0
            if h["line_search_fn"] == "strong_wolfe":
                x0 = self._snapshot()

                def evaluate(step_len, x0=x0, d=d):
                    self._add(step_len, d)
                    value = float(closure())
                    grad = self._flat_grad()
                    self._restore(x0)
                    return value, grad

                loss, flat_grad, t, ls_evals = _strong_wolfe_search(
                    evaluate, t, d, loss, flat_grad, gtd, tolerance_change=1e-9,
                    max_ls=max_eval - evals)
                self._add(t, d)
                converged = np.abs(flat_grad).max() <= tol_grad
            else:
                self._add(t, d)
                converged = False
                if n_iter != max_iter:
                    loss = float(closure())
                    flat_grad = self._flat_grad()
                    converged = np.abs(flat_grad).max() <= tol_grad
                    ls_evals = 1
            evals += ls_evals
            st["func_evals"] += ls_evals
            # -- stopping tests
            if n_iter == max_iter or evals >= max_eval or converged:
                break
            if np.abs(d * t).max() <= tol_change:
                break
            if abs(loss - prev_loss) < tol_change:
                break

        st.update(d=d, t=t, old_dirs=old_dirs, old_stps=old_stps, ro=ro, H_diag=h_diag,
                  prev_flat_grad=prev_flat_grad, prev_loss=prev_loss)
        return orig_loss
