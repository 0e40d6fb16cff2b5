"""plumbing.atomic: a file appears under its name complete or not at all, for file-object and path writers."""

from __future__ import annotations

import pytest

from plumbing.atomic import atomic_copy, atomic_open, atomic_path, is_temporary_name


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "x.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_open(target, "wb") as f:
            f.write(b"half")
            raise RuntimeError("killed")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_atomic_copy(tmp_path):
    (tmp_path / "a").write_bytes(b"x" * 100_000)
    atomic_copy(tmp_path / "a", tmp_path / "sub" / "b", durable=True)
    assert (tmp_path / "sub" / "b").read_bytes() == b"x" * 100_000
    assert not [p for p in (tmp_path / "sub").iterdir() if is_temporary_name(p.name)]


def test_atomic_path_for_writers_that_need_a_path(tmp_path):
    target = tmp_path / "s.h5"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and is_temporary_name(tmp.name) and not target.exists()
        tmp.write_bytes(b"data")
    assert target.read_bytes() == b"data" and not tmp.exists()
    with pytest.raises(ValueError):
        with atomic_path(target, temporary=".s.h5.partial") as tmp:
            assert tmp.name == ".s.h5.partial"
            tmp.write_bytes(b"half")
            raise ValueError("bad frame")
    assert target.read_bytes() == b"data" and not (tmp_path / ".s.h5.partial").exists()
