"""The OpenMP team of a model's passes shrinks beside a busy process and grows back when it
has gone (cnnkit._threads._Contention), and never overrides a team the user fixed.

The thread CPU clock the policy reads is replaced by a scripted one: each pass is off its CPU
for the share of its time the test says, so the tests are exact on any machine.
"""
import numpy as np
import pytest

import cnnkit as ck
from cnnkit import _threads
from cnnkit._ext import conv as _conv

pytestmark = pytest.mark.skipif(ck.get_num_threads() < 2,
                                reason="needs an OpenMP team of 2+ threads (2+ cores)")


class ScriptedDelay:
    """A thread CPU clock that advances by (1 - ``share``) x the wall time since its last
    read: the thread is off its CPU for ``share`` of the time."""

    def __init__(self, monkeypatch):
        import time
        self.time = time
        self.share = 0.0
        self.cpu = 0.0
        self.last = time.perf_counter()
        monkeypatch.setattr(_threads, "_thread_cpu_time", self.read)

    def read(self):
        now = self.time.perf_counter()
        self.cpu += (1.0 - self.share) * (now - self.last)
        self.last = now
        return self.cpu


@pytest.fixture
def policy(monkeypatch):
    monkeypatch.setenv("CNNKIT_ADAPTIVE_THREADS", "1")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_DYNAMIC", raising=False)
    c = _threads._contention
    monkeypatch.setattr(c, "user_fixed", False)
    monkeypatch.setattr(c, "MIN_PASS_SECONDS", 0.0)
    c.reset()
    delay = ScriptedDelay(monkeypatch)
    yield c, delay
    c.reset()


def _model():
    # a direct-kernel convolution large enough to run on the whole team when it may
    model = ck.Sequential([ck.layers.Conv2D(8, 16, 3, padding=1, impl="direct"),
                           ck.layers.ReLU()], input_shape=(8, 32, 32))
    x = np.random.default_rng(0).standard_normal((16, 8, 32, 32), dtype=np.float32)
    return model, x


def _team_of_pass(model, x):
    y = model.forward(x, training=True)
    forward_team = _conv.last_team_size()
    model.backward(np.ones_like(y))
    return forward_team, _conv.last_team_size()


def test_contended_passes_halve_the_team_and_a_quiet_probe_restores_it(policy, monkeypatch):
    c, delay = policy
    model, x = _model()
    team = ck.get_num_threads()
    delay.share = 0.0
    assert _team_of_pass(model, x) == (team, team)
    assert not c.state()["reduced"]
    delay.share = 0.6  # the thread is off its CPU 60% of the time: a busy neighbour
    for _ in range(c.STRIKES):  # that many contended passes in a row trigger it
        assert not c.state()["reduced"]
        model.forward(x, training=True)
    assert c.state()["reduced"]
    assert _team_of_pass(model, x) == (team // 2, team // 2)
    assert ck.get_num_threads() == team, "outside a pass the user's team size is unchanged"
    # the probe runs on the whole team; still contended: stays reduced
    monkeypatch.setattr(c, "PROBE_SECONDS", 0.0)
    c.local().probe_at = 0.0
    model.forward(x, training=True)
    assert _conv.last_team_size() == team
    assert c.state()["reduced"]
    # the neighbour has gone: the next probe restores the whole team for good
    delay.share = 0.0
    model.forward(x, training=True)
    assert not c.state()["reduced"]
    monkeypatch.setattr(c, "PROBE_SECONDS", 1.0)
    assert _team_of_pass(model, x) == (team, team)


def test_one_contended_pass_is_not_enough(policy):
    c, delay = policy
    model, x = _model()
    delay.share = 0.6
    model.forward(x, training=True)
    delay.share = 0.0
    model.forward(x, training=True)
    delay.share = 0.6
    model.forward(x, training=True)
    assert not c.state()["reduced"], "contention must persist over consecutive passes"


def test_a_small_wait_is_not_contention(policy):
    c, delay = policy
    model, x = _model()
    delay.share = c.SHARE / 2
    for _ in range(4):
        _team_of_pass(model, x)
    assert not c.state()["reduced"]


@pytest.mark.parametrize("how", ["set_num_threads", "num_threads", "OMP_NUM_THREADS",
                                 "CNNKIT_ADAPTIVE_THREADS=0"])
def test_a_team_the_user_fixed_is_kept(policy, monkeypatch, how):
    c, delay = policy
    model, x = _model()
    team = ck.get_num_threads()
    delay.share = 0.9

    def passes():
        for _ in range(4):
            assert _team_of_pass(model, x) == (team, team)

    if how == "set_num_threads":
        ck.set_num_threads(team)
        passes()
    elif how == "num_threads":
        with ck.num_threads(team):
            passes()
        assert c.enabled(), "leaving the context gives the team back to the policy"
    else:
        var, value = ("OMP_NUM_THREADS", str(team)) if how == "OMP_NUM_THREADS" else \
            ("CNNKIT_ADAPTIVE_THREADS", "0")
        monkeypatch.setenv(var, value)
        c.reset()
        passes()
    assert not c.state()["reduced"]
