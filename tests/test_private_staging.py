"""Node-local data private to its user (issue #26 item 8): ``hdf5_tools stage`` and the local runner's
slot directory refuse what another user (a real second uid, ``nobody``) planted at their predictable
paths; a staged shard is reused by its SHA-256 (a forged CRC32 is not enough) or inside this run's
own marked directory; the manifest records SHA-256 at pack time and after a refresh."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from hdf5_tools import fake_sources, schema
from hdf5_tools import manifest as mf
from hdf5_tools.pack import PackConfig, pack
from hdf5_tools.stage import MARKER_NAME, StageConfig, stage
from plumbing.errors import UserError
from plumbing.private_dir import ancestor_problem, entry_problem, private_dir

NOBODY = 65534
POLY = 0xEDB88320  # zlib's CRC32 polynomial, reflected

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="planting as a second uid needs root")


def forge_crc32(data: bytes, target: int) -> bytes:
    """``data`` with its last 4 bytes replaced so that its zlib CRC32 is ``target`` (same size)."""
    state = zlib.crc32(data[:-4]) ^ 0xFFFFFFFF  # the register before the last 4 bytes
    reg = target ^ 0xFFFFFFFF  # the register wanted after them
    for _ in range(32):  # undo 32 shift steps
        reg = (((reg ^ POLY) << 1) | 1) & 0xFFFFFFFF if reg & 0x80000000 else (reg << 1) & 0xFFFFFFFF
    return data[:-4] + (reg ^ state).to_bytes(4, "little")


def forged_copy(path: Path, crc32_hex: str) -> bytes:
    """Other bytes than ``path``'s (a payload in the middle), same size, same CRC32."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 8] = b"EVILDATA"
    out = forge_crc32(bytes(data), int(crc32_hex, 16))
    assert len(out) == len(data) and f"{zlib.crc32(out):08x}" == crc32_hex and out != path.read_bytes()
    return out


def as_nobody(*argv: str) -> None:
    """Run ``argv`` as the second user (uid/gid 65534), as another user of the node would."""

    def drop():
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)

    subprocess.run(list(argv), preexec_fn=drop, check=True, capture_output=True)


@pytest.fixture()
def scratch():
    """A node-local scratch folder shaped like /tmp (root's, mode 1777) that ``nobody`` can reach."""
    d = Path(tempfile.mkdtemp(prefix="pixpro-scratch-", dir="/tmp"))
    d.chmod(0o1777)
    yield d
    shutil.rmtree(d)


@pytest.fixture()
def packed(tmp_path):
    rng = np.random.default_rng(8)
    for i in range(4):
        fake_sources.write_frame_folder(
            tmp_path / "src", "train", f"v{i}", rgb=(rng.random((3 + i, 16, 16, 3)) * 255).astype(np.uint8)
        )
    return pack(PackConfig(src=str(tmp_path / "src"), out=str(tmp_path / "out"), nodes=2, shard_size=1, progress=False))


def old_manifest(m: mf.Manifest) -> str:
    """The same shards under a manifest written before SHA-256 was recorded (no ``sha256`` keys)."""
    data = json.loads(Path(m.root, mf.MANIFEST_NAME).read_text())
    for s in data["shards"]:
        del s["sha256"]
    path = Path(m.root, "old-manifest.json")
    path.write_text(json.dumps(data))
    assert all(not s.sha256 for s in mf.load_manifest(path).shards)
    return str(path)


def stage_cli(manifest: str, to: Path, run: str = "/runs/r1") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hdf5_tools.cli", "stage", manifest, "--node", "0", "--to", str(to), "--run", run],
        capture_output=True,
        text=True,
        timeout=120,
    )


def node0(m: mf.Manifest):
    return [s for s in m.shards if s.node == 0]


# ---------------------------------------------------------------------------- the manifest's strong hash
def test_pack_records_sha256_and_a_refresh_or_resumed_pack_keeps_it_current(packed):
    for s in packed.shards:
        assert s.sha256 == hashlib.sha256(Path(packed.path_of(s)).read_bytes()).hexdigest()
    # Filled in place (as `hdf5_tools flow` does), then refreshed: the hash follows the new bytes.
    s = packed.shards[0]
    with schema.open_shard(packed.path_of(s), "r+") as h5:
        h5.attrs["touched"] = 1
    m = mf.refresh_manifest(packed.root)
    assert m.shards[0].sha256 == mf.file_digests(packed.path_of(s))[1] != s.sha256
    # A pack resumed over entries written before SHA-256 was recorded describes those shards again.
    out = Path(packed.root)
    for entry in out.glob(".*.entry.json"):
        data = json.loads(entry.read_text())
        del data["sha256"]
        entry.write_text(json.dumps(data))
    again = pack(PackConfig(src=str(out.parent / "src"), out=str(out), nodes=2, shard_size=1, progress=False))
    assert [e.sha256 for e in again.shards] == [mf.file_digests(again.path_of(e))[1] for e in again.shards]


# ---------------------------------------------------------------------------- planted by another user
@pytest.mark.parametrize("manifest_kind", ["sha256", "old (crc32 only)"])
def test_a_directory_another_user_planted_with_a_forged_shard_is_refused(packed, scratch, manifest_kind):
    manifest = os.path.join(packed.root, mf.MANIFEST_NAME) if manifest_kind == "sha256" else old_manifest(packed)
    s = node0(packed)[0]
    bait = scratch / "bait.h5"
    bait.write_bytes(forged_copy(Path(packed.path_of(s)), s.crc32))
    bait.chmod(0o644)
    planted = scratch / "pixpro-g0-1234"
    as_nobody("mkdir", "-m", "0777", str(planted))
    as_nobody("cp", str(bait), str(planted / s.file))
    assert (planted.stat().st_uid, (planted / s.file).stat().st_uid) == (NOBODY, NOBODY)
    r = stage_cli(manifest, planted)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.strip() == (
        f"hdf5_tools stage: error: staging directory {planted} is owned by uid {NOBODY}, "
        f"not you (uid 0): refusing to use it (remove it, or choose another place)"
    )
    assert sorted(p.name for p in planted.iterdir()) == [s.file]  # nothing staged next to the bait
    assert (planted / s.file).read_bytes() == bait.read_bytes()


def test_a_symlink_another_user_planted_is_refused_and_nothing_goes_through_it(packed, scratch):
    target = scratch / "theirs"
    link = scratch / "pixpro-g0-1235"
    as_nobody("mkdir", "-m", "0777", str(target))
    as_nobody("ln", "-s", str(target), str(link))
    assert link.lstat().st_uid == NOBODY
    r = stage_cli(os.path.join(packed.root, mf.MANIFEST_NAME), link)
    assert r.returncode == 2
    assert r.stderr.strip() == (
        f"hdf5_tools stage: error: staging directory {link} is a symbolic link (to {target}): "
        f"refusing to use it (remove it, or choose another place)"
    )
    assert list(target.iterdir()) == []
    # A link to a folder of ours is refused just the same: the link is theirs to repoint later.
    mine = scratch / "mine"
    mine.mkdir(mode=0o700)
    link2 = scratch / "pixpro-g0-1236"
    link2.symlink_to(mine)
    os.lchown(link2, NOBODY, NOBODY)
    r = stage_cli(os.path.join(packed.root, mf.MANIFEST_NAME), link2)
    assert r.returncode == 2 and "is a symbolic link" in r.stderr and list(mine.iterdir()) == []


def test_a_parent_folder_another_user_controls_is_refused(packed, scratch):
    manifest = os.path.join(packed.root, mf.MANIFEST_NAME)
    as_nobody("mkdir", "-m", "0755", str(scratch / "theirs"))
    r = stage_cli(manifest, scratch / "theirs" / "data")
    assert r.returncode == 2
    assert r.stderr.strip() == (
        f"hdf5_tools stage: error: staging directory {scratch}/theirs/data: unsafe parent "
        f"folder: {scratch}/theirs is owned by uid {NOBODY} (another user could replace "
        f"what is in it); choose another place"
    )
    as_nobody("ln", "-s", str(scratch), str(scratch / "hop"))
    r = stage_cli(manifest, scratch / "hop" / "data")
    assert r.returncode == 2 and f"{scratch}/hop is a symbolic link owned by uid {NOBODY}" in r.stderr
    assert not (scratch / "data").exists()
    open_dir = scratch / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)  # root's, but anyone may rename what is in it
    r = stage_cli(manifest, open_dir / "data")
    assert r.returncode == 2 and f"{open_dir} is writable by every user and has no sticky bit" in r.stderr


# ---------------------------------------------------------------------------- our own directory, requeued
def test_a_requeued_job_reuses_its_own_directory_but_not_a_shard_with_a_forged_crc32(packed, scratch):
    manifest = os.path.join(packed.root, mf.MANIFEST_NAME)
    mine = node0(packed)
    to = scratch / "pixpro-g0-77"
    first = stage(StageConfig(manifest=manifest, to=str(to), node=0, run="/runs/r1"))
    assert (first.copied, first.skipped) == (len(mine), 0)
    st = to.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o700)
    assert json.loads((to / MARKER_NAME).read_text()) == {
        "format": "pixpro_of.stage",
        "run": "/runs/r1",
        "manifest": os.path.realpath(manifest),
    }
    # The requeue (same run, same job id): its own copies are verified by SHA-256 and kept.
    again = stage(StageConfig(manifest=manifest, to=str(to), node=0, run="/runs/r1"))
    assert (again.copied, again.skipped) == (0, len(mine))
    # A copy with the right size and CRC32 but other bytes is copied again.
    (to / mine[0].file).write_bytes(forged_copy(Path(packed.path_of(mine[0])), mine[0].crc32))
    third = stage(StageConfig(manifest=manifest, to=str(to), node=0, run="/runs/r1"))
    assert (third.copied, third.skipped) == (1, len(mine) - 1)
    assert (to / mine[0].file).read_bytes() == Path(packed.path_of(mine[0])).read_bytes()
    # Ours but not this run's (another run's marker, none, or opened up): refused, one line each.
    with pytest.raises(UserError, match=rf"^staging directory {to} belongs to another run \({MARKER_NAME} says "):
        stage(StageConfig(manifest=manifest, to=str(to), node=0, run="/runs/r2"))
    bare = scratch / "pixpro-g0-78"
    bare.mkdir(mode=0o700)
    with pytest.raises(
        UserError, match=rf"^staging directory {bare} has no {MARKER_NAME} marker: not made by this run"
    ):
        stage(StageConfig(manifest=manifest, to=str(bare), node=0, run="/runs/r1"))
    to.chmod(0o755)
    with pytest.raises(
        UserError, match=rf"^staging directory {to} is open to other users \(mode 0755, expected 0700\)"
    ):
        stage(StageConfig(manifest=manifest, to=str(to), node=0, run="/runs/r1"))


def test_an_old_manifest_stages_and_reuses_only_inside_this_runs_own_directory(packed, scratch):
    manifest = old_manifest(packed)
    mine = node0(packed)
    to = scratch / "pixpro-g0-79"
    r = stage_cli(manifest, to)
    assert r.returncode == 0 and f"copied {len(mine)} shards" in r.stdout, r.stderr
    r = stage_cli(manifest, to)
    assert r.returncode == 0 and "copied 0 shards" in r.stdout and f"{len(mine)} already there" in r.stdout
    for s in mine:  # checked against the old manifest's CRC32 while copying
        assert (to / s.file).read_bytes() == Path(packed.path_of(s)).read_bytes()
    # A damaged source is still caught by the CRC32 of an old manifest.
    src = Path(packed.path_of(mine[0]))
    data = bytearray(src.read_bytes())
    data[-1] ^= 0xFF
    src.write_bytes(bytes(data))
    r = stage_cli(manifest, scratch / "pixpro-g0-80")
    assert r.returncode == 2 and f"shard 0 has CRC32 {zlib.crc32(bytes(data)):08x}" in r.stderr


# ---------------------------------------------------------------------------- the pure checks
def _st(mode: int, uid: int = 0, gid: int = 0) -> os.stat_result:
    return os.stat_result((mode, 1, 1, 1, uid, gid, 0, 0, 0, 0))


def test_the_checks_name_what_is_wrong():
    d = stat.S_IFDIR
    assert entry_problem(_st(d | 0o700, uid=5), 5) is None
    assert entry_problem(_st(stat.S_IFLNK | 0o777, uid=5), 5) == "is a symbolic link"
    assert entry_problem(_st(stat.S_IFREG | 0o600, uid=5), 5) == "is not a directory"
    assert entry_problem(_st(d | 0o700, uid=6), 5) == "is owned by uid 6, not you (uid 5)"
    assert entry_problem(_st(d | 0o710, uid=5), 5) == "is open to other users (mode 0710, expected 0700)"
    assert ancestor_problem(_st(d | 0o1777), 5, 50) is None  # /tmp
    assert ancestor_problem(_st(d | 0o777), 5, 50) == "is writable by every user and has no sticky bit"
    assert ancestor_problem(_st(d | 0o775, uid=5, gid=50), 5, 50) is None  # our own group (umask 002)
    assert ancestor_problem(_st(d | 0o775, uid=5, gid=51), 5, 50) == "is writable by group 51 and has no sticky bit"
    assert ancestor_problem(_st(d | 0o755, uid=7), 5, 50).startswith("is owned by uid 7")


def test_private_dir_tightens_our_own_closed_folder_only_when_asked(tmp_path):
    d = tmp_path / "slots"
    d.mkdir(mode=0o755)
    d.chmod(0o755)
    with pytest.raises(UserError, match="is open to other users"):
        private_dir(d, what="slot directory")
    assert private_dir(d, what="slot directory", tighten=True).created is False
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    d.chmod(0o775)  # others of our group could have put files in it: not tightened
    with pytest.raises(UserError, match=r"is open to other users \(mode 0775"):
        private_dir(d, what="slot directory", tighten=True)


# ---------------------------------------------------------------------------- the local runner's slots
def test_a_slot_directory_another_user_planted_is_refused(tmp_path, scratch):
    script = tmp_path / "job.sh"
    ran = tmp_path / "ran"
    script.write_text(f"#!/bin/bash\ntouch {ran}\n")
    for planted in (scratch / "slots", scratch / "slots-link"):
        if planted.name == "slots":
            as_nobody("mkdir", "-m", "0777", str(planted))
            why = f"is owned by uid {NOBODY}, not you (uid 0)"
        else:
            as_nobody("ln", "-s", str(scratch / "slots"), str(planted))
            why = f"is a symbolic link (to {scratch / 'slots'})"
        state = tmp_path / f"{planted.name}.json"
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "launcher.local_runner",
                "--slots",
                "1",
                "--slot-dir",
                str(planted),
                "--state-file",
                str(state),
                str(script),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        line = f"slot directory {planted} {why}: refusing to use it (remove it, or choose another place)"
        assert r.returncode == 2 and r.stderr.strip() == f"python -m launcher.local_runner: error: {line}", r.stderr
        assert json.loads(state.read_text())["state"] == "failed" and json.loads(state.read_text())["reason"] == line
        assert not ran.exists() and list((scratch / "slots").iterdir()) == []
    # Our own slot directory in the same place is made private and used.
    ours = scratch / "my-slots"
    r = subprocess.run(
        [sys.executable, "-m", "launcher.local_runner", "--slots", "1", "--slot-dir", str(ours), str(script)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and ran.exists()
    assert stat.S_IMODE(ours.stat().st_mode) == 0o700 and [p.name for p in ours.iterdir()] == ["slot.0"]


# ---------------------------------------------------------------------------- through a real job script
@pytest.mark.mpi
def test_a_local_job_whose_scratch_another_user_controls_stops_at_staging(packed, tmp_path, scratch, mpi_env):
    """The job script's staging step (templates/_staging.sh.j2) refuses in one line and nothing trains."""
    theirs = scratch / "theirs"
    as_nobody("mkdir", "-m", "0755", str(theirs))
    env = dict(mpi_env, TMPDIR=str(theirs))
    env["PATH"] = f"{Path(__file__).resolve().parent / 'fake_schedulers'}:{env['PATH']}"
    run = tmp_path / "run"
    trainer = f"{sys.executable} {Path(__file__).resolve().parent / 'fake_schedulers' / 'fixture_trainer.py'}"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "launcher.cli",
            "submit",
            "--gpus",
            "0",
            "--run-dir",
            str(run),
            "--data",
            os.path.join(packed.root, mf.MANIFEST_NAME),
            "--wait",
            "--trainer-command",
            trainer,
            "steps=2",
            "step_time=0",
        ],
        env=env,
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert r.returncode != 0, r.stdout + r.stderr
    job_id = (run / "job" / "jobs.tsv").read_text().split("\t")[3]
    line = (
        f"hdf5_tools stage: error: staging directory {theirs}/pixpro-g0-{job_id}: unsafe parent folder: {theirs} "
        f"is owned by uid {NOBODY} (another user could replace what is in it); choose another place"
    )
    log = (run / "logs" / "run.log").read_text()
    assert line in log.splitlines(), log[-3000:]
    assert not (run / "argv.log").exists() and not (run / "done").exists()  # the trainer never started
    assert not list(theirs.glob("pixpro-*"))
