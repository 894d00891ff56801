"""Atomic writes (``cnnkit.io``): the order of the durability steps, and an interruption at the
moment a direct overwrite would already have destroyed the old file.

A crash-safe replace needs, in this order: the data written to a temporary file, THAT file's
descriptor fsynced, the rename onto the target, then the folder fsynced so the rename itself
survives.  A directory fsync alone does not make the data durable."""
import os
import signal
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import cnnkit.io as ckio
from cnnkit.io import atomic_open, atomic_write_bytes, load_weights, save_weights


def _record(monkeypatch):
    """Record fsync and rename calls, in order, with what each descriptor/path refers to."""
    events = []
    real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename

    def fsync(fd):
        st = os.fstat(fd)
        events.append(("fsync", (st.st_dev, st.st_ino), stat.S_ISDIR(st.st_mode)))
        return real_fsync(fd)

    def move(real):
        def call(src, dst, *args, **kwargs):
            st = os.stat(src)
            events.append(("rename", (st.st_dev, st.st_ino), os.fspath(dst)))
            return real(src, dst, *args, **kwargs)
        return call

    monkeypatch.setattr(ckio.os, "fsync", fsync)
    monkeypatch.setattr(ckio.os, "replace", move(real_replace))
    monkeypatch.setattr(ckio.os, "rename", move(real_rename))
    return events


def _check_order(events, target):
    renames = [i for i, e in enumerate(events) if e[0] == "rename"]
    assert len(renames) == 1, f"expected exactly one rename onto the target, got {events}"
    r = renames[0]
    _, moved, dst = events[r]
    assert os.path.realpath(dst) == os.path.realpath(target)
    # the renamed file is the one now at the target
    st = os.stat(target)
    assert moved == (st.st_dev, st.st_ino)
    data_syncs = [i for i, e in enumerate(events) if e[0] == "fsync" and e[1] == moved]
    assert data_syncs and data_syncs[0] < r, \
        f"the temporary file's own descriptor must be fsynced before the rename: {events}"
    folder = os.stat(os.path.dirname(os.path.realpath(target)))
    dir_syncs = [i for i, e in enumerate(events)
                 if e[0] == "fsync" and e[2] is True and e[1] == (folder.st_dev, folder.st_ino)]
    assert dir_syncs and dir_syncs[-1] > r, \
        f"the folder must be fsynced after the rename: {events}"


@pytest.mark.parametrize("writer", ["atomic_write_bytes", "atomic_open_text", "save_weights"])
def test_data_file_is_fsynced_before_the_rename_and_the_folder_after(tmp_path, monkeypatch,
                                                                        writer):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    events = _record(monkeypatch)
    if writer == "atomic_write_bytes":
        atomic_write_bytes(target, b"new data")
    elif writer == "atomic_open_text":
        with atomic_open(target, "w") as f:
            f.write("new text")
    else:
        save_weights(target, {"w": np.arange(4.0)})
    monkeypatch.undo()
    _check_order(events, target)
    assert sorted(os.listdir(tmp_path)) == ["out.bin"]


def test_fsync_false_skips_every_fsync_but_still_renames(tmp_path, monkeypatch):
    target = tmp_path / "out.bin"
    events = _record(monkeypatch)
    atomic_write_bytes(target, b"x", fsync=False)
    monkeypatch.undo()
    assert [e[0] for e in events] == ["rename"]
    assert target.read_bytes() == b"x"


def test_failing_write_after_output_started_keeps_the_old_file(tmp_path):
    """The block fails after writing part of the new content: a direct overwrite would have
    truncated the target by now."""
    target = tmp_path / "weights.bin"
    target.write_bytes(b"old content " * 100)
    with pytest.raises(OSError, match="disk full"):
        with atomic_open(target) as f:
            f.write(b"partial new content")
            f.flush()
            raise OSError("disk full")
    assert target.read_bytes() == b"old content " * 100
    assert sorted(os.listdir(tmp_path)) == ["weights.bin"]


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_writer_killed_after_writing_the_first_tensor_leaves_the_old_file(tmp_path):
    """The writer kills itself once the first tensor of the new file is written and flushed to
    the OS: at that point a direct ``open(target, "wb")`` would have left a truncated,
    half-written target behind.  The old file must load unchanged, and nothing but temporary
    files (which only a live process can remove) may sit next to it."""
    target = tmp_path / "weights.npz"
    save_weights(target, {"w": np.arange(10, dtype=np.float32)}, {"v": 1})
    before = target.read_bytes()
    child = textwrap.dedent(f"""
        import os, signal
        import numpy as np
        import cnnkit as ck

        real = np.lib.format.write_array
        calls = []

        def write_then_die(fp, array, *args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(fp, array, *args, **kwargs)

        np.lib.format.write_array = write_then_die
        ck.io.save_weights({str(target)!r},
                           {{"a": np.ones(50_000), "b": np.zeros(50_000)}})
    """)
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode(errors="replace")
    assert target.read_bytes() == before
    arrays, meta = load_weights(target)
    assert list(arrays) == ["w"] and meta == {"v": 1}
    others = [p for p in os.listdir(tmp_path) if p != "weights.npz"]
    # the interrupted write went to a temporary file that holds the first tensor, not the target
    assert len(others) == 1 and others[0].startswith("."), others
    assert os.path.getsize(tmp_path / others[0]) > 100_000
