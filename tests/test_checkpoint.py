"""Checkpoint store: atomic files, latest pointer, retention, validation and fallback."""

from __future__ import annotations

import json
import zlib

import pytest
import torch

from pixpro_of.train.checkpoint import CheckpointStore
from plumbing.errors import UserError


def state(step: int, epoch: int = 0) -> dict:
    g = torch.Generator().manual_seed(step)
    return {
        "step": step,
        "epoch": epoch,
        "model": {"w": torch.randn(64, generator=g)},
        "rng": {"python": {"version": 3, "state": list(range(5)), "gauss": None}},
    }


def test_save_writes_payload_manifest_and_latest(tmp_path):
    store = CheckpointStore(tmp_path / "ck", keep=3)
    info, seconds = store.save(state(7, 1))
    assert info.path.name == "step_00000007.pt" and seconds >= 0
    assert (tmp_path / "ck" / "latest").read_text() == "step_00000007.pt\n"
    m = json.loads(info.manifest.read_text())
    assert m["step"] == 7 and m["epoch"] == 1 and m["size"] == info.path.stat().st_size
    assert m["crc32"] == f"{zlib.crc32(info.path.read_bytes()):08x}"
    loaded, linfo = store.load_latest()
    assert linfo.step == 7 and torch.equal(loaded["model"]["w"], state(7)["model"]["w"])
    assert loaded["rng"]["python"]["state"] == [0, 1, 2, 3, 4]
    assert not [p for p in (tmp_path / "ck").iterdir() if ".tmp." in p.name]


def test_keeps_the_n_newest_and_every_milestone(tmp_path):
    store = CheckpointStore(tmp_path, keep=2)
    for step in range(1, 7):
        store.save(state(step), milestone=(step == 2))
    assert [e.step for e in store.entries()] == [6, 5, 2]
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["step_00000002.pt", "step_00000005.pt", "step_00000006.pt"]


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete_payload", "garbage_manifest"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path, damage, caplog):
    store = CheckpointStore(tmp_path, keep=3)
    for step in (10, 20, 30):
        store.save(state(step))
    newest = store.entries()[0]
    if damage == "truncate":
        newest.path.write_bytes(newest.path.read_bytes()[:-100])
    elif damage == "flip":
        data = bytearray(newest.path.read_bytes())
        data[200] ^= 0x01
        newest.path.write_bytes(bytes(data))
    elif damage == "delete_payload":
        newest.path.unlink()
    else:
        newest.manifest.write_text("{not json")
    loaded, info = store.load_latest()
    assert info.step == 20 and torch.equal(loaded["model"]["w"], state(20)["model"]["w"])


def test_payload_that_does_not_unpickle_is_damaged_even_with_a_matching_manifest(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save(state(1))
    info, _ = store.save(state(2))
    junk = b"this is not a torch file"
    info.path.write_bytes(junk)
    m = json.loads(info.manifest.read_text())
    m.update(size=len(junk), crc32=f"{zlib.crc32(junk):08x}")
    info.manifest.write_text(json.dumps(m))
    assert store.load_latest()[1].step == 1


def test_all_damaged_is_an_error_not_a_fresh_start(tmp_path):
    store = CheckpointStore(tmp_path)
    info, _ = store.save(state(5))
    info.path.write_bytes(b"x")
    with pytest.raises(UserError, match=r"every checkpoint is damaged \(step_00000005.pt: size 1 != "):
        store.load_latest()


def test_empty_directory_means_no_checkpoint(tmp_path):
    assert CheckpointStore(tmp_path / "none").load_latest() is None


def test_leftovers_of_a_killed_writer_are_ignored_and_cleaned(tmp_path):
    store = CheckpointStore(tmp_path, keep=3)
    store.save(state(1))
    (tmp_path / ".step_00000002.pt.tmp.999").write_bytes(b"partial")  # killed mid-write
    (tmp_path / "step_00000003.pt").write_bytes(b"renamed, manifest never written")
    assert store.load_latest()[1].step == 1
    store.clean_temporaries()
    assert not (tmp_path / ".step_00000002.pt.tmp.999").exists()
    store.save(state(4))  # pruning removes the orphan payload older than the newest checkpoint
    assert not (tmp_path / "step_00000003.pt").exists()
    assert [e.step for e in store.entries()] == [4, 1]
