"""Tests for cnnkit.io: weight files, atomic writes, check_state."""

from __future__ import annotations

import json
import os
import stat
import zipfile

import numpy as np
import pytest

from cnnkit import io as ckio
from cnnkit.io import (METADATA_KEY, atomic_open, atomic_write_bytes, atomic_write_text,
                       check_state, load_weights, save_weights)


def sample_arrays():
    rng = np.random.default_rng(0)
    return {
        "conv1.weight": rng.standard_normal((6, 1, 5, 5)).astype(np.float32),
        "conv1.bias": np.zeros(6, np.float32),
        "dense.weight": rng.standard_normal((10, 84)),  # float64
        "steps": np.array(1234, dtype=np.int64),       # 0-d
        "counts": np.arange(7, dtype=np.int32),
        "mask": np.array([True, False, True]),
        "half": np.arange(4, dtype=np.float16),
        "u8": np.arange(5, dtype=np.uint8),
        "big-endian": np.arange(3, dtype=">f8"),
        "fortran": np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4)),
        "empty": np.zeros((0, 3), np.float32),
        # names that could collide with np.savez's own parameters are fine
        "file": np.ones(2), "allow_pickle": np.ones(2), "args": np.ones(2),
    }


def only_file(folder):
    return sorted(os.listdir(folder))


# --------------------------------------------------------------------------- round trips

def test_round_trip_arrays_and_metadata(tmp_path):
    arrays = sample_arrays()
    meta = {"architecture": {"layers": ["Conv2D", "Dense"], "shape": [1, 28, 28]},
            "cnnkit_version": "0.1.0", "epoch": 3, "lr": 0.01, "note": "Ünïcode ✓"}
    p = tmp_path / "model.npz"
    save_weights(p, arrays, meta)
    got, got_meta = load_weights(p)
    assert list(got) == list(arrays)  # order kept
    for k, v in arrays.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        np.testing.assert_array_equal(got[k], v)
        assert got[k].flags.writeable
    assert got_meta == meta
    assert only_file(tmp_path) == ["model.npz"]
    # it is a standard .npz
    with np.load(p, allow_pickle=False) as z:
        np.testing.assert_array_equal(z["conv1.weight"], arrays["conv1.weight"])
        assert json.loads(z[METADATA_KEY].tobytes()) == meta


def test_no_metadata_and_str_path(tmp_path):
    p = str(tmp_path / "w.npz")
    save_weights(p, {"a": np.arange(3.0)})
    got, meta = load_weights(p)
    assert meta == {} and list(got) == ["a"]
    save_weights(p, {}, {"empty": True})  # overwrite with an empty state
    assert load_weights(p) == ({}, {"empty": True})


def test_numpy_scalars_and_pair_iterables_accepted(tmp_path):
    p = tmp_path / "w.npz"
    save_weights(p, [("x", np.float32(2.5)), ("y", np.arange(2))])
    got, _ = load_weights(p)
    assert got["x"].shape == () and got["x"].dtype == np.float32


def test_loads_plain_np_savez_files(tmp_path):
    p = tmp_path / "plain.npz"
    np.savez(p, a=np.arange(4), b=np.eye(2, dtype=np.float32))
    got, meta = load_weights(p)
    assert meta == {} and got["b"].dtype == np.float32
    q = tmp_path / "compressed.npz"
    np.savez_compressed(q, a=np.arange(1000.0))
    np.testing.assert_array_equal(load_weights(q)[0]["a"], np.arange(1000.0))


# --------------------------------------------------------------------------- save validation

@pytest.mark.parametrize("arrays, exc, message", [
    ({"": np.zeros(1)}, ValueError, "empty"),
    ({1: np.zeros(1)}, TypeError, "str"),
    ({METADATA_KEY: np.zeros(1)}, ValueError, "reserved"),
    ({"a\x00b": np.zeros(1)}, ValueError, "NUL"),
    ({"a": [1.0, 2.0]}, TypeError, "numpy array"),
    ({"a": np.array([{}, None], dtype=object)}, TypeError, "object"),
    ({"a": np.array(["x", "y"])}, TypeError, "<U1"),
    ({"a": np.zeros(2, dtype=[("f", "f4")])}, TypeError, "dtype"),
    ([("a", np.zeros(1)), ("a", np.ones(1))], ValueError, "duplicate"),
    ("nope", TypeError, "pairs"),
    (42, TypeError, "dict"),
])
def test_save_validation(tmp_path, arrays, exc, message):
    with pytest.raises(exc, match=message):
        save_weights(tmp_path / "w.npz", arrays)
    assert only_file(tmp_path) == []


@pytest.mark.parametrize("meta, exc", [
    ([1, 2], TypeError),
    ({1: "x"}, TypeError),
    ({"a": object()}, ValueError),
    ({"a": float("nan")}, ValueError),
    ({"a": np.float32(1)}, ValueError),
])
def test_save_metadata_validation(tmp_path, meta, exc):
    with pytest.raises(exc):
        save_weights(tmp_path / "w.npz", {"a": np.zeros(1)}, meta)
    assert only_file(tmp_path) == []


def test_save_path_validation(tmp_path):
    with pytest.raises(TypeError):
        save_weights(None, {})
    with pytest.raises(TypeError):
        save_weights(b"w.npz", {})
    with pytest.raises(ValueError):
        save_weights("", {})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_weights(tmp_path / "no" / "w.npz", {})
    with pytest.raises(IsADirectoryError):
        save_weights(tmp_path, {})


# --------------------------------------------------------------------------- load errors

def test_load_missing(tmp_path):
    p = tmp_path / "missing.npz"
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_weights(p)
    with pytest.raises(ValueError, match="folder"):
        load_weights(tmp_path)


@pytest.mark.parametrize("content, message", [
    (b"", "empty"),
    (b"hello, this is not a zip", "zip signature"),
    (b"\x93NUMPY\x01\x00", "single .npy"),
])
def test_load_not_an_npz(tmp_path, content, message):
    p = tmp_path / "weights.npz"
    p.write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        load_weights(p)
    assert str(p) in str(info.value)


def test_load_single_npy_refused(tmp_path):
    p = tmp_path / "array.npy"
    np.save(p, np.arange(3))
    with pytest.raises(ValueError, match="single .npy") as info:
        load_weights(p)
    assert str(p) in str(info.value)


@pytest.mark.parametrize("cut", [0.9, 0.5, 0.1, 10])
def test_load_truncated(tmp_path, cut):
    p = tmp_path / "w.npz"
    save_weights(p, sample_arrays(), {"a": 1})
    data = p.read_bytes()
    n = cut if isinstance(cut, int) else int(len(data) * cut)
    p.write_bytes(data[:n])
    with pytest.raises(ValueError) as info:
        load_weights(p)
    assert str(p) in str(info.value)


def test_load_corrupt_data_bytes_detected(tmp_path):
    p = tmp_path / "w.npz"
    arr = np.arange(1000, dtype=np.float64)
    save_weights(p, {"a": arr})
    data = bytearray(p.read_bytes())
    i = data.index(arr[500:501].tobytes())  # a byte in the middle of the array data
    data[i] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="(?i)crc|corrupt") as info:
        load_weights(p)
    assert str(p) in str(info.value)


def test_load_corrupt_npy_header(tmp_path):
    p = tmp_path / "w.npz"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("a.npy", b"\x93NUMPY\x01\x00\x10\x00{garbage}       \n")
    with pytest.raises(ValueError, match="'a'") as info:
        load_weights(p)
    assert str(p) in str(info.value)


def test_load_size_mismatch_in_entry(tmp_path):
    p = tmp_path / "w.npz"
    header = b"{'descr': '<f8', 'fortran_order': False, 'shape': (1000000,), }"
    header = header + b" " * (118 - len(header)) + b"\n"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("a.npy", b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little")
                    + header + b"\x00" * 16)
    with pytest.raises(ValueError, match="declares shape") as info:
        load_weights(p)
    assert str(p) in str(info.value)


def test_load_entry_with_more_data_than_its_header_declares(tmp_path):
    # The mirror of the case above: an entry longer than its header says (a header rewritten
    # to a smaller shape, or two arrays spliced) is the same corruption and gets the same
    # diagnosis, naming the declared shape and the bytes actually present.
    p = tmp_path / "w.npz"
    header = b"{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }"
    header = header + b" " * (118 - len(header)) + b"\n"
    data = np.arange(3, dtype="<f8").tobytes()
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("a.npy", b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little")
                    + header + data)
    with pytest.raises(ValueError, match=r"declares shape \(2,\) float64 \(16 bytes\) but the "
                                         r"entry holds 24 bytes") as info:
        load_weights(p)
    assert str(p) in str(info.value) and "'a'" in str(info.value)


def test_load_unexpected_entry_and_duplicates(tmp_path):
    p = tmp_path / "w.npz"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("readme.txt", b"hi")
    with pytest.raises(ValueError, match="readme.txt"):
        load_weights(p)
    q = tmp_path / "dup.npz"
    np.savez(q, a=np.zeros(2))
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
        with zipfile.ZipFile(q, "a") as zf:
            zf.writestr("a.npy", p.read_bytes())
    with pytest.raises(ValueError, match="duplicate") as info:
        load_weights(q)
    assert str(q) in str(info.value)


@pytest.mark.parametrize("raw, message", [
    (np.frombuffer(b"{not json", np.uint8), "bad metadata JSON"),
    (np.frombuffer(b"\xff\xfe", np.uint8), "bad metadata JSON"),
    (np.frombuffer(b"[1, 2]", np.uint8), "JSON object"),
    (np.zeros(3, np.float32), "uint8"),
])
def test_load_bad_metadata(tmp_path, raw, message):
    p = tmp_path / "w.npz"
    np.savez(p, **{"a": np.zeros(2), METADATA_KEY: raw})
    with pytest.raises(ValueError, match=message) as info:
        load_weights(p)
    assert str(p) in str(info.value)


class _Payload:
    """Unpickling this would create a folder (the marker) as a side effect."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_object_arrays_refused_and_never_unpickled(tmp_path):
    marker = tmp_path / "MARKER_code_was_executed"
    p = tmp_path / "evil.npz"
    evil = np.empty(1, dtype=object)
    evil[0] = _Payload(marker)
    np.savez(p, weight=np.ones(3, np.float32), evil=evil)  # allow_pickle default: pickles
    q = tmp_path / "evil_control.npz"
    q.write_bytes(p.read_bytes())

    with pytest.raises(ValueError, match="object array") as info:
        load_weights(p)
    assert str(p) in str(info.value) and "'evil'" in str(info.value)
    assert not marker.exists()

    # Control: the payload is live — unpickling it really would have run code.
    with np.load(q, allow_pickle=True) as z:
        z["evil"]
    assert marker.exists()


# --------------------------------------------------------------------------- atomic writes

def test_failed_save_keeps_previous_file_and_leaves_no_temp(tmp_path, monkeypatch):
    p = tmp_path / "w.npz"
    save_weights(p, {"old": np.arange(3.0)}, {"v": 1})
    before = p.read_bytes()

    real_write_array = np.lib.format.write_array
    calls = []

    def failing_write_array(fp, array, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the first tensor is written, then the disk "fills up"
            fp.write(b"\x00" * 100)
            raise OSError(28, "No space left on device")
        return real_write_array(fp, array, *args, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", failing_write_array)
    with pytest.raises(OSError, match="No space"):
        save_weights(p, {"new1": np.ones(1000), "new2": np.ones(1000)})
    monkeypatch.undo()

    assert len(calls) == 2
    assert p.read_bytes() == before
    arrays, meta = load_weights(p)
    assert list(arrays) == ["old"] and meta == {"v": 1}
    assert only_file(tmp_path) == ["w.npz"]


def test_failed_rename_leaves_no_temp(tmp_path, monkeypatch):
    p = tmp_path / "w.npz"
    save_weights(p, {"old": np.arange(3.0)})
    before = p.read_bytes()

    def boom(src, dst):
        raise PermissionError("rename refused")

    monkeypatch.setattr(ckio.os, "replace", boom)
    with pytest.raises(PermissionError):
        save_weights(p, {"new": np.ones(4)})
    monkeypatch.undo()
    assert p.read_bytes() == before
    assert only_file(tmp_path) == ["w.npz"]


def test_atomic_open_exception_in_block(tmp_path):
    p = tmp_path / "config.json"
    atomic_write_text(p, '{"a": 1}')
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(p, "w") as f:
            f.write('{"a": 2, "partial')
            raise KeyboardInterrupt
    assert p.read_text() == '{"a": 1}'
    assert only_file(tmp_path) == ["config.json"]


def test_atomic_open_writes_and_fsyncs(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(ckio.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    p = tmp_path / "data.bin"
    atomic_write_bytes(p, b"\x00\x01\x02")
    assert p.read_bytes() == b"\x00\x01\x02"
    assert synced  # the data was fsynced before the rename
    with atomic_open(p) as f:  # default mode "wb"
        f.write(b"abc")
        # the target is untouched until the block completes
        assert p.read_bytes() == b"\x00\x01\x02"
    assert p.read_bytes() == b"abc"
    atomic_write_text(p, "héllo\n")
    assert p.read_bytes() == "héllo\n".encode("utf-8")
    assert only_file(tmp_path) == ["data.bin"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_atomic_write_permissions(tmp_path):
    p = tmp_path / "new.bin"
    atomic_write_bytes(p, b"x")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~mask  # not mkstemp's 0600
    os.chmod(p, 0o640)
    atomic_write_bytes(p, b"y")
    assert stat.S_IMODE(p.stat().st_mode) == 0o640  # kept on overwrite


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_atomic_write_through_symlink_replaces_the_target(tmp_path):
    real = tmp_path / "real.bin"
    real.write_bytes(b"old")
    link = tmp_path / "link.bin"
    try:
        link.symlink_to(real)
    except OSError:
        pytest.skip("cannot create symlinks here")
    atomic_write_bytes(link, b"new")
    assert link.is_symlink() and real.read_bytes() == b"new"
    assert only_file(tmp_path) == ["link.bin", "real.bin"]


def test_atomic_argument_validation(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        with atomic_open(tmp_path / "x", "a"):
            pass
    with pytest.raises(ValueError, match="encoding"):
        with atomic_open(tmp_path / "x", "wb", encoding="utf-8"):
            pass
    with pytest.raises(TypeError):
        atomic_write_bytes(tmp_path / "x", "text")
    with pytest.raises(TypeError):
        atomic_write_text(tmp_path / "x", b"bytes")
    with pytest.raises(IsADirectoryError):
        atomic_write_bytes(tmp_path, b"")
    assert only_file(tmp_path) == []


# --------------------------------------------------------------------------- check_state

def expected_state():
    return {
        "conv1.weight": ((6, 1, 5, 5), np.float32),
        "conv1.bias": np.zeros(6, np.float32),            # an array works as a spec
        "fc.weight": {"shape": (10, 84), "dtype": "float32"},
        "fc.bias": (10,),                                  # bare shape: dtype not checked
    }


def good_state():
    return {"conv1.weight": np.zeros((6, 1, 5, 5), np.float32),
            "conv1.bias": np.zeros(6, np.float32),
            "fc.weight": np.zeros((10, 84), np.float32),
            "fc.bias": np.zeros(10, np.float64)}


def test_check_state_ok():
    assert check_state(expected_state(), good_state(), "model.npz") is None


def test_check_state_missing():
    got = good_state()
    del got["fc.weight"]
    with pytest.raises(ValueError) as info:
        check_state(expected_state(), got, "runs/model.npz")
    msg = str(info.value)
    assert msg.startswith("runs/model.npz: ")
    assert "missing tensor 'fc.weight'" in msg and "(10, 84)" in msg


def test_check_state_unexpected():
    got = good_state()
    got["fc2.weight"] = np.zeros((3, 3), np.float32)
    with pytest.raises(ValueError, match=r"m.npz: .*unexpected tensor 'fc2.weight' "
                                         r"\(shape \(3, 3\) float32\)"):
        check_state(expected_state(), got, "m.npz")


def test_check_state_shape_mismatch_names_both_shapes():
    got = good_state()
    got["conv1.weight"] = np.zeros((6, 3, 5, 5), np.float32)
    with pytest.raises(ValueError) as info:
        check_state(expected_state(), got, "m.npz")
    msg = str(info.value)
    assert "'conv1.weight'" in msg and "(6, 3, 5, 5)" in msg and "(6, 1, 5, 5)" in msg


def test_check_state_dtype_mismatch_and_count():
    got = good_state()
    got["conv1.bias"] = got["conv1.bias"].astype(np.float64)
    got["fc.weight"] = got["fc.weight"].astype(np.float16)
    got["extra"] = np.zeros(1)
    with pytest.raises(ValueError) as info:
        check_state(expected_state(), got, "m.npz")
    msg = str(info.value)
    assert "'conv1.bias'" in msg and "float64" in msg and "float32" in msg
    assert "and 2 more mismatches" in msg


def test_check_state_without_path_and_validation():
    with pytest.raises(ValueError, match="^weights: "):
        check_state({"a": (2,)}, {}, None)
    with pytest.raises(TypeError):
        check_state([("a", (2,))], {})
    with pytest.raises(TypeError):
        check_state({"a": "bad spec"}, {"a": np.zeros(2)})


def test_check_state_with_loaded_file(tmp_path):
    p = tmp_path / "w.npz"
    state = good_state()
    save_weights(p, state, {"arch": "lenet"})
    arrays, _ = load_weights(p)
    check_state(expected_state(), arrays, p)
    del arrays["conv1.bias"]
    with pytest.raises(ValueError, match="missing tensor 'conv1.bias'") as info:
        check_state(expected_state(), arrays, p)
    assert str(p) in str(info.value)
