"""Optimizers and learning-rate schedules: step-by-step agreement with torch.optim, exact state
round trips (also through flatten_state / .npz), hyper-parameter validation, registration."""
import io
import math

import numpy as np
import pytest

import cnnkit as ck
from cnnkit import optim, schedules

TORCH_REASON = "PyTorch not installed: the peer comparison needs torch==2.13.0"


class Holder:
    """The minimal layer-like object a ``ck.Parameter`` needs: a name, params and grads."""

    def __init__(self, name, **params):
        self.name = name
        self.params = {k: np.array(v, dtype=np.float64) for k, v in params.items()}
        self.grads = {}


def make_params(seed=0):
    rng = np.random.default_rng(seed)
    layer = Holder(f"h{seed}", weight=rng.standard_normal((4, 3)), bias=rng.standard_normal(4))
    return layer, [ck.Parameter(layer, "weight"), ck.Parameter(layer, "bias")]


def grad_sequence(n, seed=1):
    rng = np.random.default_rng(seed)
    return [{"weight": rng.standard_normal((4, 3)), "bias": rng.standard_normal(4)}
            for _ in range(n)]


FIRST_ORDER = [
    ("sgd", "SGD", {"lr": 0.05}),
    ("sgd", "SGD", {"lr": 0.05, "momentum": 0.9, "dampening": 0.1, "weight_decay": 0.01}),
    ("sgd", "SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.02}),
    ("sgd", "SGD", {"lr": 0.05, "momentum": 0.5, "maximize": True}),
    ("adam", "Adam", {}),
    ("adam", "Adam", {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1}),
    ("adam", "Adam", {"lr": 0.01, "amsgrad": True, "weight_decay": 0.05}),
    ("adamw", "AdamW", {"lr": 0.01}),
    ("adamw", "AdamW", {"lr": 0.01, "weight_decay": 0.3, "amsgrad": True, "betas": (0.5, 0.9)}),
    ("rmsprop", "RMSprop", {}),
    ("rmsprop", "RMSprop", {"lr": 0.005, "alpha": 0.9, "momentum": 0.8, "weight_decay": 0.01}),
    ("rmsprop", "RMSprop", {"lr": 0.005, "centered": True}),
    ("rmsprop", "RMSprop", {"lr": 0.005, "centered": True, "momentum": 0.5, "eps": 1e-4}),
    ("adagrad", "Adagrad", {}),
    ("adagrad", "Adagrad", {"lr": 0.1, "lr_decay": 0.01, "weight_decay": 0.02,
                            "initial_accumulator_value": 0.1, "eps": 1e-8}),
]


def _ids(cases):
    return [f"{name}-" + "-".join(f"{k}={v}" for k, v in kw.items()) for name, _, kw in cases]


@pytest.mark.parametrize("name,torch_name,kwargs", FIRST_ORDER, ids=_ids(FIRST_ORDER))
def test_first_order_optimizers_match_torch(name, torch_name, kwargs):
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    layer, params = make_params()
    tparams = [torch.tensor(p.value.copy(), requires_grad=True) for p in params]
    opt = optim.create(name, params, **kwargs)
    topt = getattr(torch.optim, torch_name)(tparams, **kwargs)
    for step, g in enumerate(grad_sequence(50)):
        # the gradient also depends on the weights, so weight-dependent terms matter
        layer.grads = {k: g[k] + 0.5 * layer.params[k] for k in g}
        for tp, p in zip(tparams, params):
            tp.grad = torch.tensor(layer.grads[p.key])
        weight_before = layer.params["weight"]
        opt.step()
        topt.step()
        assert layer.params["weight"] is weight_before  # updated in place
        for tp, p in zip(tparams, params):
            ours, theirs = p.value, tp.detach().numpy()
            rel = np.linalg.norm(ours - theirs) / np.linalg.norm(theirs)
            assert rel <= 1e-5, f"{name} {kwargs}: step {step + 1}, {p.name}: rel diff {rel}"
            np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-12)
    assert opt.steps == 50


def test_parameters_without_gradient_are_left_alone():
    layer, params = make_params()
    bias = layer.params["bias"].copy()
    opt = optim.Adam(params, lr=0.1)
    layer.grads = {"weight": np.ones((4, 3))}
    opt.step()
    np.testing.assert_array_equal(layer.params["bias"], bias)
    assert "h0.bias" not in opt.state and opt.state["h0.weight"]["step"] == 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_updates_stay_in_the_parameter_dtype(dtype):
    layer = ck.layers.Dense(3, 2, dtype=dtype, rng=0)
    for name in ("sgd", "adam", "adamw", "rmsprop", "adagrad"):
        opt = optim.create(name, [ck.Parameter(layer, "weight")], lr=0.01)
        w = layer.params["weight"]
        layer.grads = {"weight": np.ones((2, 3), dtype=np.float64)}
        opt.step()
        assert layer.params["weight"] is w and w.dtype == dtype
        for st in opt.state.values():
            for v in st.values():
                if isinstance(v, np.ndarray):
                    assert v.dtype == dtype


# --------------------------------------------------------------------------- L-BFGS
X_LS = np.random.default_rng(3).standard_normal((30, 5))
Y_LS = X_LS @ np.random.default_rng(4).standard_normal((5, 2)) + 0.3


def rosenbrock_np(holder):
    x, y = holder.params["xy"]
    holder.grads = {"xy": np.array([-2 * (1 - x) - 400 * x * (y - x * x), 200 * (y - x * x)])}
    return (1 - x) ** 2 + 100 * (y - x * x) ** 2


def rosenbrock_torch(xy):
    return (1 - xy[0]) ** 2 + 100 * (xy[1] - xy[0] ** 2) ** 2


def least_squares_np(holder):
    w, b = holder.params["weight"], holder.params["bias"]
    r = X_LS @ w.T + b - Y_LS
    n = r.size
    holder.grads = {"weight": 2 * r.T @ X_LS / n, "bias": 2 * r.sum(0) / n}
    return float(np.mean(r * r))


def least_squares_torch(w, b, torch):
    return torch.mean((torch.tensor(X_LS) @ w.T + b - torch.tensor(Y_LS)) ** 2)


LBFGS_CASES = [
    ("rosenbrock", {"lr": 1.0, "line_search_fn": "strong_wolfe", "max_iter": 5,
                    "history_size": 4}),
    ("rosenbrock", {"lr": 0.05, "max_iter": 4, "history_size": 3}),
    ("rosenbrock", {"lr": 1.0, "line_search_fn": "strong_wolfe", "max_iter": 10,
                    "max_eval": 8}),
    ("least_squares", {"lr": 1.0, "line_search_fn": "strong_wolfe", "max_iter": 3}),
    ("least_squares", {"lr": 0.5, "max_iter": 3, "history_size": 2}),
]


def lbfgs_problem(kind, torch=None):
    """(holder, params, closure) for cnnkit and (tensors, closure factory) for torch."""
    if kind == "rosenbrock":
        holder = Holder("rb", xy=[-1.5, 2.0])
        params = [ck.Parameter(holder, "xy")]
        closure = lambda: rosenbrock_np(holder)  # noqa: E731
        tfun = (lambda ts: rosenbrock_torch(ts[0])) if torch else None
    else:
        rng = np.random.default_rng(5)
        holder = Holder("ls", weight=rng.standard_normal((2, 5)), bias=np.zeros(2))
        params = [ck.Parameter(holder, "weight"), ck.Parameter(holder, "bias")]
        closure = lambda: least_squares_np(holder)  # noqa: E731
        tfun = (lambda ts: least_squares_torch(ts[0], ts[1], torch)) if torch else None
    return holder, params, closure, tfun


@pytest.mark.parametrize("kind,kwargs", LBFGS_CASES,
                         ids=[f"{k}-{'-'.join(f'{a}={b}' for a, b in kw.items())}"
                              for k, kw in LBFGS_CASES])
def test_lbfgs_matches_torch(kind, kwargs):
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    holder, params, closure, tfun = lbfgs_problem(kind, torch)
    tparams = [torch.tensor(p.value.copy(), requires_grad=True) for p in params]
    opt = optim.LBFGS(params, **kwargs)
    topt = torch.optim.LBFGS(tparams, **kwargs)

    def tclosure():
        topt.zero_grad()
        loss = tfun(tparams)
        loss.backward()
        return loss

    losses = []
    for call in range(12):
        ours = opt.step(closure)
        theirs = float(topt.step(tclosure).detach())
        # near the optimum the loss is tiny, so its relative difference is not meaningful
        assert float(ours) == pytest.approx(theirs, rel=1e-6, abs=1e-12)
        for tp, p in zip(tparams, params):
            ref = tp.detach().numpy()
            rel = np.linalg.norm(p.value - ref) / max(np.linalg.norm(ref), 1e-300)
            assert rel <= 1e-5, f"{kind} {kwargs}: after step(closure) #{call + 1}: {rel}"
        losses.append(float(ours))
    tstate = topt.state[tparams[0]]
    assert opt.global_state["n_iter"] == tstate["n_iter"]
    assert opt.global_state["func_evals"] == tstate["func_evals"]
    assert len(opt.global_state["old_dirs"]) == len(tstate["old_dirs"])
    assert losses[-1] < losses[0]


def test_lbfgs_solves_rosenbrock_with_strong_wolfe():
    holder, params, closure, _ = lbfgs_problem("rosenbrock")
    opt = optim.create("lbfgs", params, lr=1, line_search_fn="strong_wolfe", max_iter=100)
    for _ in range(3):
        opt.step(closure)
    np.testing.assert_allclose(holder.params["xy"], [1.0, 1.0], atol=1e-4)


def test_lbfgs_needs_a_closure():
    _, params, _, _ = lbfgs_problem("rosenbrock")
    with pytest.raises(TypeError, match="LBFGS: step\\(\\) needs a closure"):
        optim.LBFGS(params).step()


def test_lbfgs_trains_a_dense_layer():
    """The closure can drive a real cnnkit model (forward, loss, zero_grad, backward)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 4))
    target = x @ rng.standard_normal((4, 3))
    model = ck.Sequential([ck.layers.Dense(4, 3, dtype=np.float64, rng=1)], input_shape=(4,))
    opt = optim.LBFGS(model, line_search_fn="strong_wolfe")

    def closure():
        out = model.forward(x)
        diff = out - target
        opt.zero_grad()
        model.backward(2 * diff / diff.size)
        return float(np.mean(diff ** 2))

    first = opt.step(closure)
    assert opt.step(closure) < 1e-3 * first


# --------------------------------------------------------------------------- state round trips
def _npz_round_trip(state):
    buf = io.BytesIO()
    np.savez(buf, **optim.flatten_state(state))
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as f:
        return optim.unflatten_state({k: f[k] for k in f.files})


ROUND_TRIP = [
    ("sgd", {"lr": 0.05, "momentum": 0.9, "nesterov": True}),
    ("adam", {"lr": 0.01, "amsgrad": True, "weight_decay": 0.1}),
    ("adamw", {"lr": 0.01}),
    ("rmsprop", {"lr": 0.01, "centered": True, "momentum": 0.9}),
    ("adagrad", {"lr": 0.1, "lr_decay": 0.01}),
]


@pytest.mark.parametrize("name,kwargs", ROUND_TRIP, ids=[n for n, _ in ROUND_TRIP])
@pytest.mark.parametrize("via", ["dict", "npz"])
def test_state_round_trip_continues_bit_for_bit(name, kwargs, via):
    grads = grad_sequence(10)
    layer_a, params_a = make_params(0)
    opt_a = optim.create(name, params_a, **kwargs)
    for g in grads[:5]:
        layer_a.grads = dict(g)
        opt_a.step()
    # a fresh optimizer with other hyper-parameters, on other parameter names (another model)
    layer_b, params_b = make_params(7)
    for k in layer_a.params:
        layer_b.params[k][...] = layer_a.params[k]
    opt_b = optim.create(name, params_b, lr=0.5)
    state = opt_a.state_dict()
    state = _npz_round_trip(state) if via == "npz" else state
    opt_b.load_state_dict(state)
    assert opt_b.hyper == opt_a.hyper and opt_b.steps == 5
    for g in grads[5:]:
        layer_a.grads, layer_b.grads = dict(g), dict(g)
        opt_a.step()
        opt_b.step()
    for k in layer_a.params:
        np.testing.assert_array_equal(layer_a.params[k], layer_b.params[k])


@pytest.mark.parametrize("line_search", [None, "strong_wolfe"])
def test_lbfgs_state_round_trip_continues_bit_for_bit(line_search):
    ha, pa, ca, _ = lbfgs_problem("rosenbrock")
    opt_a = optim.LBFGS(pa, lr=1 if line_search else 0.05, max_iter=4, history_size=3,
                        line_search_fn=line_search)
    for _ in range(3):
        opt_a.step(ca)
    hb, pb, cb, _ = lbfgs_problem("rosenbrock")
    hb.params["xy"][...] = ha.params["xy"]
    opt_b = optim.LBFGS(pb)
    state = _npz_round_trip(opt_a.state_dict())
    assert len(state["global"]["old_dirs"]) == 3
    opt_b.load_state_dict(state)
    for _ in range(3):
        assert opt_a.step(ca) == opt_b.step(cb)
    np.testing.assert_array_equal(ha.params["xy"], hb.params["xy"])


def test_load_state_dict_rejects_mismatched_state():
    layer, params = make_params()
    opt = optim.Adam(params)
    layer.grads = grad_sequence(1)[0]
    opt.step()
    state = opt.state_dict()
    other_layer, other = make_params(3)
    with pytest.raises(ValueError, match="Adam: state has unknown hyper-parameters"):
        optim.Adam(other).load_state_dict({**state, "hyper": {"momentum": 0.9}})
    with pytest.raises(ValueError, match="Adam: betas"):
        optim.Adam(other).load_state_dict({**state, "hyper": {"betas": (2.0, 0.9)}})
    with pytest.raises(ValueError, match="state for unknown parameters"):
        optim.Adam(other[:1]).load_state_dict(state)
    bad = optim.flatten_state(state)
    bad["state/h0.weight/exp_avg@a"] = np.zeros((2, 2))
    with pytest.raises(ValueError, match="has shape"):
        optim.Adam(params).load_state_dict(optim.unflatten_state(bad))
    _, lb = lbfgs_problem("rosenbrock")[:2]
    with pytest.raises(ValueError, match="LBFGS: state 'd' must be a vector of 2"):
        optim.LBFGS(lb).load_state_dict({"global": {"d": np.zeros(3)}})


def test_flatten_state_round_trip_is_exact():
    state = {
        "f": 0.1, "i": -3, "big": 2 ** 62, "b": True, "s": "strong_wolfe", "none": None,
        "np64": np.float64(1 / 3), "np32": np.float32(0.1), "i32": np.int32(7),
        "arr": np.arange(6, dtype=np.float32).reshape(2, 3), "nan": np.array([np.nan, -0.0]),
        "tuple": (0.9, 0.999), "list": [np.ones(2), 1.5, [1, "x"]], "empty": {}, "el": [],
        "odd/key@#%": {"": 1, 5: "int key", "dense_1.weight": np.zeros((0, 3))},
        "unicode ü": "é",
    }
    flat = optim.flatten_state(state)
    assert all(isinstance(k, str) and isinstance(v, np.ndarray) and not v.dtype.hasobject
               for k, v in flat.items())
    for restored in (optim.unflatten_state(flat), _npz_round_trip(state),
                     optim.unflatten_state(dict(reversed(list(flat.items()))))):
        _assert_same(restored, state)


def _assert_same(a, b):
    assert type(a) is type(b), (a, b)
    if isinstance(b, dict):
        assert list(a) == list(b) or set(a) == set(b)
        for k in b:
            _assert_same(a[k], b[k])
    elif isinstance(b, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    elif isinstance(b, (np.ndarray, np.generic)):
        assert a.dtype == b.dtype and np.shape(a) == np.shape(b)
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    else:
        assert a == b


def test_flatten_state_refuses_what_needs_pickle():
    with pytest.raises(TypeError, match="object array"):
        optim.flatten_state({"x": np.array([None, 1])})
    with pytest.raises(TypeError, match="cannot store set"):
        optim.flatten_state({"x": {1, 2}})
    with pytest.raises(ValueError, match="malformed key"):
        optim.unflatten_state({"nokey": np.zeros(1)})
    with pytest.raises(ValueError, match="should have items"):
        optim.unflatten_state({"l@l": np.array(2), "l/0@i": np.array(1)})


# --------------------------------------------------------------------------- validation
BAD = [
    ("sgd", {"lr": -1}, "SGD: lr must be >= 0"),
    ("sgd", {"momentum": float("nan")}, "SGD: momentum must be a finite number"),
    ("sgd", {"dampening": 2}, "SGD: dampening must be"),
    ("sgd", {"nesterov": True}, "SGD: Nesterov momentum needs momentum > 0"),
    ("adam", {"betas": (1.0, 0.9)}, r"Adam: betas\[0\] must be >= 0.0 and < 1.0"),
    ("adam", {"betas": 0.9}, "Adam: betas must be a pair"),
    ("adam", {"eps": -1e-8}, "Adam: eps must be >= 0"),
    ("adam", {"amsgrad": "yes"}, "Adam: amsgrad must be True or False"),
    ("adamw", {"weight_decay": -0.1}, "AdamW: weight_decay must be >= 0"),
    ("adamw", {"betas": (0.9, 1.5)}, r"AdamW: betas\[1\]"),
    ("rmsprop", {"alpha": 1.5}, "RMSProp: alpha must be"),
    ("rmsprop", {"momentum": -0.5}, "RMSProp: momentum must be >= 0"),
    ("adagrad", {"lr_decay": -1}, "AdaGrad: lr_decay must be >= 0"),
    ("adagrad", {"initial_accumulator_value": -1}, "AdaGrad: initial_accumulator_value"),
    ("lbfgs", {"max_iter": 0}, "LBFGS: max_iter must be an int >= 1"),
    ("lbfgs", {"max_eval": 2.5}, "LBFGS: max_eval must be an int"),
    ("lbfgs", {"history_size": 0}, "LBFGS: history_size must be an int >= 1"),
    ("lbfgs", {"tolerance_grad": -1}, "LBFGS: tolerance_grad must be >= 0"),
    ("lbfgs", {"line_search_fn": "armijo"}, "LBFGS: line_search_fn must be None or"),
]


@pytest.mark.parametrize("name,kwargs,match", BAD, ids=[f"{n}-{m}" for n, _, m in BAD])
def test_bad_hyper_parameters_name_the_optimizer(name, kwargs, match):
    _, params = make_params()
    with pytest.raises(ValueError, match=match):
        optim.create(name, params, **kwargs)


def test_bad_parameter_lists():
    layer, params = make_params()
    with pytest.raises(ValueError, match="Adam: no parameters"):
        optim.Adam([])
    with pytest.raises(TypeError, match="RMSProp: expected a model or a list"):
        optim.RMSProp([np.zeros(3)])
    with pytest.raises(ValueError, match="listed twice"):
        optim.AdaGrad(params + params[:1])
    layer.grads = {"weight": np.zeros((3, 4))}
    with pytest.raises(ValueError, match="Adam: gradient of h0.weight has shape"):
        optim.Adam(params).step()


def test_defaults_follow_torch():
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    _, params = make_params()
    t = [torch.zeros(2, requires_grad=True)]
    pairs = [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW),
             ("rmsprop", torch.optim.RMSprop), ("adagrad", torch.optim.Adagrad),
             ("lbfgs", torch.optim.LBFGS)]
    for name, cls in pairs:
        ours = optim.create(name, params).hyper
        theirs = cls(t).defaults
        for k, v in ours.items():
            assert theirs[k] == v, (name, k, v, theirs[k])


def test_every_optimizer_is_registered():
    reg = ck.get_registry()
    expected = {"sgd": optim.SGD, "adam": optim.Adam, "adamw": optim.AdamW,
                "rmsprop": optim.RMSProp, "adagrad": optim.AdaGrad, "lbfgs": optim.LBFGS}
    for name, cls in expected.items():
        assert name in reg.optimizers
        assert reg.optimizer(name) is cls and reg.optimizers[name][1] == "cnnkit.builtin.optimizers"
        assert issubclass(cls, optim.Optimizer)
    assert set(expected) <= set(optim.available())
    assert isinstance(optim.create("AdamW", make_params()[1]), optim.AdamW)


# --------------------------------------------------------------------------- schedules
def _sched_pair(kind, opt, topt, torch):
    ls = torch.optim.lr_scheduler
    if kind == "step":
        return schedules.StepLR(opt, step_size=3, gamma=0.5), ls.StepLR(topt, 3, gamma=0.5)
    if kind == "multistep":
        return (schedules.MultiStepLR(opt, [2, 5, 5, 11], gamma=0.3),
                ls.MultiStepLR(topt, [2, 5, 5, 11], gamma=0.3))
    if kind == "exponential":
        return schedules.ExponentialLR(opt, 0.85), ls.ExponentialLR(topt, 0.85)
    if kind == "cosine":
        return (schedules.CosineAnnealingLR(opt, T_max=7, eta_min=0.01),
                ls.CosineAnnealingLR(topt, T_max=7, eta_min=0.01))
    if kind == "warmup":
        return (schedules.LinearWarmup(opt, warmup_steps=4, start_factor=0.1),
                ls.LinearLR(topt, start_factor=0.1, total_iters=4))
    if kind == "warmup_end":
        return (schedules.LinearWarmup(opt, warmup_steps=6, start_factor=0.5, end_factor=0.2),
                ls.LinearLR(topt, start_factor=0.5, end_factor=0.2, total_iters=6))
    if kind == "warmup_cosine":
        ours = schedules.LinearWarmup(opt, 5, start_factor=0.2,
                                      after=schedules.CosineAnnealingLR(opt, T_max=10))
        theirs = ls.SequentialLR(topt, [ls.LinearLR(topt, start_factor=0.2, total_iters=5),
                                        ls.CosineAnnealingLR(topt, T_max=10)], milestones=[5])
        return ours, theirs
    if kind == "warmup_step":
        after = schedules.StepLR(opt, step_size=4, gamma=0.5)  # built before the warm-up
        ours = schedules.LinearWarmup(opt, 3, start_factor=0.25, after=after)
        theirs = ls.SequentialLR(topt, [ls.LinearLR(topt, start_factor=0.25, total_iters=3),
                                        ls.StepLR(topt, 4, gamma=0.5)], milestones=[3])
        return ours, theirs
    raise AssertionError(kind)


SCHEDULES = ["step", "multistep", "exponential", "cosine", "warmup", "warmup_end",
             "warmup_cosine", "warmup_step"]


@pytest.mark.parametrize("kind", SCHEDULES)
def test_schedules_match_torch(kind):
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    _, params = make_params()
    opt = optim.SGD(params, lr=0.2)
    topt = torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.2)
    ours, theirs = _sched_pair(kind, opt, topt, torch)
    assert ours.get_last_lr() == pytest.approx(theirs.get_last_lr(), rel=1e-12)
    for epoch in range(20):
        opt.step()
        topt.step()
        ours.step()
        theirs.step()
        assert ours.get_last_lr()[0] == pytest.approx(theirs.get_last_lr()[0], rel=1e-10), epoch
        assert opt.lr == ours.get_last_lr()[0]
        assert topt.param_groups[0]["lr"] == pytest.approx(opt.lr, rel=1e-10)


@pytest.mark.parametrize("kind", SCHEDULES)
def test_schedule_state_round_trip(kind):
    def build(opt):
        return {
            "step": lambda: schedules.StepLR(opt, 3, 0.5),
            "multistep": lambda: schedules.MultiStepLR(opt, [2, 5, 5, 11], 0.3),
            "exponential": lambda: schedules.ExponentialLR(opt, 0.85),
            "cosine": lambda: schedules.CosineAnnealingLR(opt, 7, 0.01),
            "warmup": lambda: schedules.LinearWarmup(opt, 4, 0.1),
            "warmup_end": lambda: schedules.LinearWarmup(opt, 6, 0.5, 0.2),
            "warmup_cosine": lambda: schedules.LinearWarmup(
                opt, 5, 0.2, after=schedules.CosineAnnealingLR(opt, 10)),
            "warmup_step": lambda: schedules.LinearWarmup(
                opt, 3, 0.25, after=schedules.StepLR(opt, 4, 0.5)),
        }[kind]()

    for split in (2, 9):  # during the warm-up and after it
        opt_a2 = optim.SGD(make_params()[1], lr=0.2)
        a2 = build(opt_a2)
        for _ in range(split):
            a2.step()
        opt_b = optim.SGD(make_params()[1], lr=0.7)
        b = build(opt_b)
        b.load_state_dict(_npz_round_trip(a2.state_dict()))
        assert opt_b.lr == opt_a2.lr
        for _ in range(10):
            a2.step()
            b.step()
            assert b.get_last_lr() == a2.get_last_lr() and opt_b.lr == opt_a2.lr


def test_schedule_validation():
    opt = optim.SGD(make_params()[1], lr=0.1)
    cases = [
        (lambda: schedules.StepLR(opt, 0), "StepLR: step_size must be a positive int"),
        (lambda: schedules.StepLR(opt, 2, gamma=0), "StepLR: gamma must be > 0"),
        (lambda: schedules.MultiStepLR(opt, [5, 2]), "MultiStepLR: milestones must be increasing"),
        (lambda: schedules.MultiStepLR(opt, [0]), "MultiStepLR: each milestone"),
        (lambda: schedules.ExponentialLR(opt, float("inf")), "ExponentialLR: gamma must be"),
        (lambda: schedules.CosineAnnealingLR(opt, 0), "CosineAnnealingLR: T_max"),
        (lambda: schedules.CosineAnnealingLR(opt, 5, eta_min=-1), "CosineAnnealingLR: eta_min"),
        (lambda: schedules.LinearWarmup(opt, 5, start_factor=0), "LinearWarmup: start_factor"),
        (lambda: schedules.LinearWarmup(opt, 0), "LinearWarmup: warmup_steps"),
        (lambda: schedules.LinearWarmup(opt, 3, after=schedules.StepLR(
            optim.SGD(make_params()[1]), 2)), "LinearWarmup: after .* another optimizer"),
    ]
    for build, match in cases:
        with pytest.raises(ValueError, match=match):
            build()
    with pytest.raises(TypeError, match="StepLR: expected a cnnkit optimizer"):
        schedules.StepLR(object(), 2)
    with pytest.raises(ValueError, match="the state belongs to a StepLR"):
        schedules.ExponentialLR(opt, 0.9).load_state_dict(schedules.StepLR(opt, 2).state_dict())
