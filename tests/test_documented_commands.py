"""Every command line the documentation shows runs as written.

Where the lines come from (found anew on every run, so a new line is checked without editing this file):
- every fenced code block of README.md and docs/*.md (backslash continuations joined, ``# comments``
  dropped, ``;`` / ``&&`` / ``|`` separate commands);
- every ``Example:``/``Examples:`` of the ``--help`` epilogs of ``launcher``, ``hdf5_tools``,
  ``python -m pixpro_of``, ``python -m flow`` and ``python -m synth``, walked through their lazy
  groups (``;`` separates examples).

How a line of ours runs, in a fresh working directory that holds the fixtures under the names the
documentation uses (``world``, ``eval_world``, ``shards``, ``data/...``) plus SUBSTITUTE for
absolute placeholders (``/data/bdd100k`` ...):
- ``run``: as written on the synthetic world (``hdf5_tools pack/verify/info/viz/stage``,
  ``launcher render/list``, ``train --print-config/--list-presets``, any ``--dry-run``);
- ``dry-run``: ``launcher submit`` and ``launcher pipeline`` with ``--dry-run`` appended: every submit-time check runs
  (profile, resources, the trainer's config, the ``--data`` manifest and its flow pairs);
- ``print-config``: ``python -m pixpro_of train --run-dir ...`` with ``--print-config`` appended
  (the trainer resolves the config and every ``key=value``);
- ``parse``: everything else (training, evaluation, RAFT, long renders, runs that need a finished
  run directory): click parses the line completely, options, types, choices and required ones,
  without running the command.
A line whose program is not ours must start with a prefix in FOREIGN (with the reason it is not
run); anything else fails, so a new kind of line needs a decision here.
"""

from __future__ import annotations

import glob
import importlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List, Tuple

import click
import pytest

from plumbing.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
BIN = Path(PY).parent

#: program -> (module whose ``command`` is its click group, argv prefix that runs it here)
PROGRAMS = {
    "launcher": ("launcher.cli", [PY, "-m", "launcher.cli"]),
    "hdf5_tools": ("hdf5_tools.cli", [PY, "-m", "hdf5_tools.cli"]),
    "pixpro_of": ("pixpro_of.__main__", [PY, "-m", "pixpro_of"]),
    "pixpro-flow": ("flow.__main__", [PY, "-m", "flow"]),
    "python -m launcher": ("launcher.cli", [PY, "-m", "launcher.cli"]),
    "python -m hdf5_tools": ("hdf5_tools.cli", [PY, "-m", "hdf5_tools.cli"]),
    "python -m pixpro_of": ("pixpro_of.__main__", [PY, "-m", "pixpro_of"]),
    "python -m flow": ("flow.__main__", [PY, "-m", "flow"]),
    "python -m synth": ("synth.cli", [PY, "-m", "synth"]),
}

#: How documented lines that are not our programs begin, and why this test does not run them.
FOREIGN = {
    "make ": "a Makefile target; make demo/test/reproduce run the commands checked here",
    "module ": "a cluster's environment modules",
    "python3 -m venv ": "creating a virtual environment",
    "pip ": "installing packages",
    ".venv/bin/pip ": "installing packages",
    ".venv/bin/horovodrun ": "Horovod's own build check",
    ".ci/": "the CI and Horovod build scripts (minutes; CUDA for the NCCL build)",
    "bench/": "a benchmark or the GPU check (make bench; tests/test_gpu_check.py runs the GPU check's dry run)",
    "python bench/": "a benchmark or the GPU check (make bench; tests/test_gpu_check.py)",
    "bash bench/": "the GPU check (needs a GPU; tests/test_gpu_check.py runs its dry run)",
    ".venv/bin/python bench/": "a benchmark script (make bench)",
    "export ": "a shell variable for the Horovod build",
    "eval ": "shell completion set-up (click's own completion scripts)",
    "source": "shell completion set-up (fish)",
    "_LAUNCHER_COMPLETE=": "shell completion set-up (click's own completion scripts)",
}


def foreign(cmd: str):
    """The FOREIGN prefix ``cmd`` starts with, or None."""
    return next((k for k in FOREIGN if cmd.startswith(k)), None)


#: Absolute or placeholder paths in the documentation -> what this test made in their place.
#: ``{W}`` is the fixture folder. Longest first.
SUBSTITUTE = [
    ("/data/bdd100k/flow/pth/train", "{W}/world/flow/train"),  # the seed's .pth flows: the world's exact .flo flows
    ("/data/bdd100k", "{W}/world"),  # BDD100K: the synthetic world in its layout (images/, videos/, flow/)
    ("/data/cityscapes", "{W}/world"),  # Cityscapes: the same world, written in both layouts
    ("$LOCALDIR", "{CWD}/localdir"),  # a node-local disk
]

#: Lines that need a real cluster or a GPU and have no dry-run form: exact command -> reason.
SKIP = {
    "mpirun -np 64 hdf5_tools flow shards/ --model raft-small --weights raft-small.pth --amp bf16": (
        "64 ranks of RAFT on GPUs with a local checkpoint; the same options are parsed from the epilog's RAFT example"
    ),
}

#: Lines known to fail today whose source this session may not edit: exact command -> owner and fix.
#: The test asserts they still fail; when fixed, it fails until the entry is removed.
PENDING: dict = {}

#: (program, subcommand words) run as written on the fixtures.
RUN = {
    ("hdf5_tools", "pack"),
    ("hdf5_tools", "verify"),
    ("hdf5_tools", "info"),
    ("hdf5_tools", "viz"),
    ("hdf5_tools", "stage"),
    ("launcher", "render"),
    ("launcher", "list"),
}


# ------------------------------------------------------------------ finding the lines


def markdown_lines() -> List[Tuple[str, str]]:
    """(where, command line) for every line of every fenced code block of README.md and docs/*.md."""
    out = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        inside, pending, start = False, "", 0
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.lstrip().startswith("```"):
                inside = not inside
                continue
            if not inside:
                continue
            if not pending:
                start = n
            code = _strip_comment(line)
            if code.rstrip().endswith("\\"):
                pending += code.rstrip()[:-1] + " "
                continue
            text = (pending + code).strip()
            pending = ""
            if text:
                out.append((f"{path.relative_to(ROOT)}:{start}", text))
    return out


def _strip_comment(line: str) -> str:
    """The line without a shell ``# comment`` (a ``#`` outside quotes that starts a word)."""
    quote = None
    for i, c in enumerate(line):
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def epilog_lines() -> List[Tuple[str, str]]:
    """(where, command) for every example in the epilogs of our programs' commands."""
    out = []

    def walk(path: str, cmd: click.Command) -> None:
        for text in re.findall(r"Examples?:\s*(.*)", cmd.epilog or "", re.S):
            for part in text.split("; "):
                part = re.split(r"\.\s+[A-Z']", part.strip())[0]  # a sentence after the example
                part = re.sub(r"\s*\([^)]*\)\s*$", "", part).strip().rstrip(".")  # "(make demo)"
                try:
                    words = shlex.split(part)
                except ValueError:  # prose ("'PROG COMMAND --help' shows a command's options")
                    continue
                if words and _program(words)[0] is not None:
                    out.append((f"epilog of {path}", part))
        if isinstance(cmd, click.Group):
            ctx = click.Context(cmd)
            for name in cmd.list_commands(ctx):
                walk(f"{path} {name}", cmd.get_command(ctx, name))

    for prog in ("launcher", "hdf5_tools", "python -m pixpro_of", "python -m flow", "python -m synth"):
        walk(prog, importlib.import_module(PROGRAMS[prog][0]).command)
    return out


def _program(words: List[str]):
    """(program, its words) after leading VAR=value words and an ``mpirun -np N``/``-npernode N``."""
    words = list(words)
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
        words = words[1:]
    if words[:1] == ["mpirun"]:
        words = words[1:]
        while words and words[0].startswith("-"):
            words = words[2:] if words[0] in ("-np", "-n", "-npernode", "--npernode") else words[1:]
    for prog in sorted(PROGRAMS, key=len, reverse=True):
        n = len(prog.split())
        if words[:n] == prog.split():
            return prog, words[n:]
    return None, words


def split_commands(line: str) -> List[str]:
    """A shell line's commands (``;``, ``&&``, ``|`` outside quotes separate them)."""
    lex = shlex.shlex(line, posix=False, punctuation_chars=";&|")
    lex.whitespace_split = True
    parts, cur = [], []
    for tok in lex:
        if tok in (";", "&&", "|", "||"):
            parts.append(" ".join(cur))
            cur = []
        else:
            cur.append(tok)
    parts.append(" ".join(cur))
    return [p for p in parts if p.strip()]


def documented_commands() -> List[Tuple[str, str]]:
    """(where, one command) for every command the documentation shows, in order."""
    out = []
    for where, line in markdown_lines() + epilog_lines():
        for cmd in split_commands(line):
            out.append((where, cmd))
    return out


# -------------------------------------------------------- fixtures: the synthetic world under the documented names


@pytest.fixture(scope="module")
def world():
    """``world``: 6 synthetic videos of 16 frames in BDD100K and Cityscapes layouts (5 train, 1 val);
    ``shards``: its train split packed for 4 node sets with the exact flows (every pair present).

    The folder is in the checkout's ``build/``, not pytest's temporary folder: the commands run where
    a user runs them, on a shared filesystem (a multi-node job refuses run directories and data under
    /tmp, which is local to each node on a cluster; launcher/sharedfs.py)."""
    from hdf5_tools.pack import PackConfig, pack
    from synth import SynthConfig, write_dataset

    (ROOT / "build").mkdir(exist_ok=True)
    w = Path(tempfile.mkdtemp(prefix="documented-", dir=ROOT / "build"))
    try:
        write_dataset(w / "world", SynthConfig(videos=6, frames=16, size=(64, 48), fps=10, seed=0, format="all"))
        pack(
            PackConfig(
                src=str(w / "world"),
                out=str(w / "shards"),
                nodes=4,
                flows=str(w / "world" / "flow"),
                splits=["train"],
                progress=False,
            )
        )
        yield w
    finally:
        shutil.rmtree(w, ignore_errors=True)


def _workdir(w: Path, n: int) -> Path:
    """A fresh working directory holding the fixtures under the documented relative names."""
    cwd = w / f"cmd{n:03d}"
    cwd.mkdir()
    for name in ("world", "shards"):
        (cwd / name).symlink_to(w / name)
    (cwd / "eval_world").symlink_to(w / "world")
    (cwd / "data").mkdir()
    for name in ("bdd", "synth", "cityscapes"):
        (cwd / "data" / name).symlink_to(w / "world")
    (cwd / "localdir").mkdir()
    (cwd / "raft-small.pth").write_bytes(b"")  # a checkpoint path that exists, for the submit-time checks
    # what 'launcher profile init --out mycluster.toml' writes on a SLURM cluster of 4-GPU nodes
    (cwd / "mycluster.toml").write_text(
        'name = "mycluster"\nscheduler = "slurm"\nqueue = "gpu"\ngpus_per_node = 4\n'
        'cpus_per_node = 64\nmax_walltime = "2-00:00:00"\nexclusive = false\n'
        'warning_signal = "USR2"\ncan_requeue = true\n'
    )
    return cwd


def substitute(cmd: str, w: Path, cwd: Path) -> str:
    for old, new in SUBSTITUTE:
        cmd = cmd.replace(old, new.format(W=w, CWD=cwd))
    return cmd


# ------------------------------------------------------------------ running one command


def parse_only(prog: str, words: List[str]) -> None:
    """Parse ``words`` as click would run them (options, types, choices, required), without running."""
    cmd = importlib.import_module(PROGRAMS[prog][0]).command
    ctx = cmd.make_context(prog, list(words))
    while isinstance(cmd, click.Group):
        protected = ctx._protected_args if hasattr(ctx, "_protected_args") else ctx.protected_args
        rest = [*protected, *ctx.args]
        if not rest:
            raise click.UsageError("no command given", ctx)
        name, sub, rest = cmd.resolve_command(ctx, rest)
        ctx = sub.make_context(name, rest, parent=ctx)
        cmd = sub


def mode_of(prog: str, words: List[str]) -> str:
    sub = tuple(w for w in words[:2] if not w.startswith("-"))
    group = "launcher" if "launcher" in prog else "hdf5_tools" if "hdf5_tools" in prog else prog
    if "--dry-run" in words or "--print-config" in words or "--list-presets" in words:
        return "run"
    if group == "launcher" and sub[:1] in (("submit",), ("pipeline",)):
        return "dry-run"
    if sub[:1] == ("train",) and "--run-dir" in words:
        return "print-config"
    if group == "hdf5_tools" and sub[:1] == ("pack",) and any(w.startswith("synth:") for w in words):
        return "parse"  # renders the world in memory: seconds per video at 640x360
    if (group, sub[0] if sub else "") in RUN:
        return "run"
    return "parse"


def run_command(where: str, cmd: str, w: Path, n: int) -> Tuple[str, str]:
    """Run one documented command; ("ok" | "refused", detail)."""
    cwd = _workdir(w, n)
    words = shlex.split(substitute(cmd, w, cwd))
    stdout_to = None
    if ">" in words:  # launcher render ... > job.sh
        i = words.index(">")
        stdout_to, words = words[i + 1], words[:i]
    prog, rest = _program(words)
    expanded = []
    for word in rest:
        hits = sorted(glob.glob(word, root_dir=cwd)) if any(c in word for c in "*?[") else []
        expanded += hits or [word]
    mode = mode_of(prog, expanded)
    if mode == "parse":
        try:
            parse_only(prog, expanded)
        except (click.ClickException, UserError) as exc:
            return "refused", f"does not parse: {exc.format_message() if hasattr(exc, 'format_message') else exc}"
        return "ok", "parsed"
    if mode == "dry-run":
        expanded.append("--dry-run")
    if mode == "print-config":
        expanded.append("--print-config")
    if prog.endswith("hdf5_tools") and expanded[:1] == ["pack"]:
        out_arg = [x for x in expanded[1:] if not x.startswith("-")][1:2]
        if out_arg and (cwd / out_arg[0]).is_symlink():  # pack writes a fresh OUT, not the fixture
            (cwd / out_arg[0].rstrip("/")).unlink()
        expanded.append("--no-progress")
    env = dict(
        os.environ,
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        PYTHONPATH=str(ROOT),
        OMPI_ALLOW_RUN_AS_ROOT="1",
        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
    )
    # "mpirun -npernode 1 PROG ..." runs under mpirun as written (one rank on this one machine)
    mpirun = words[: len(words) - len(rest) - len(prog.split())] if words[:1] == ["mpirun"] else []
    argv = mpirun + PROGRAMS[prog][1] + expanded
    r = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if stdout_to:
        (cwd / stdout_to).write_text(r.stdout)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]
        return "refused", f"exit {r.returncode} ({mode}): {last}"
    return "ok", mode


# ------------------------------------------------------------------ the tests


def test_the_documentation_shows_commands_of_every_program():
    cmds = documented_commands()
    progs = {_program(shlex.split(c))[0] for _, c in cmds}
    assert {"launcher", "hdf5_tools", "python -m pixpro_of", "python -m flow", "python -m synth"} <= progs
    # The lines the issue found broken are among them (so the extraction sees the README's blocks).
    texts = [c for _, c in cmds]
    assert any(c.startswith("hdf5_tools pack /data/bdd100k/videos shards/") for c in texts)
    assert any(c.startswith("python -m pixpro_of eval seg --backbone runs/pixpro-k6-g16") for c in texts)
    assert any(c.startswith("launcher submit --scheduler pbs --cluster abci3") for c in texts)
    for where, c in cmds:
        if foreign(c):
            continue
        prog, words = _program(shlex.split(c))
        if prog is None:
            raise AssertionError(
                f"{where}: {c!r}: neither one of our programs nor a known other tool (add it to FOREIGN with a reason)"
            )
    for key in list(SKIP) + list(PENDING):
        assert key in texts, f"{key!r} is listed in SKIP/PENDING but no longer documented: remove the entry"


def test_the_extraction_rules():
    assert split_commands("launcher status r ; launcher logs r") == ["launcher status r", "launcher logs r"]
    assert split_commands("hdf5_tools verify s/*.h5 && hdf5_tools info s/m.json") == [
        "hdf5_tools verify s/*.h5",
        "hdf5_tools info s/m.json",
    ]
    assert _strip_comment("make demo    # the main job") == "make demo    "
    assert _strip_comment("x 'a # b'") == "x 'a # b'"
    assert _program(["mpirun", "-np", "2", "hdf5_tools", "flow", "s"]) == ("hdf5_tools", ["flow", "s"])
    assert _program(["python", "-m", "pixpro_of", "train"]) == ("python -m pixpro_of", ["train"])
    assert mode_of("launcher", ["submit", "--gpus", "0"]) == "dry-run"
    assert mode_of("python -m pixpro_of", ["train", "--config", "x", "--run-dir", "r"]) == "print-config"
    assert mode_of("python -m pixpro_of", ["eval", "seg", "--backbone", "r"]) == "parse"
    # parse_only sees what --help would not: a missing required option, a bad type.
    with pytest.raises(click.MissingParameter, match="out"):
        parse_only("python -m pixpro_of", ["eval", "seg", "--backbone", "r", "--data", "d"])
    with pytest.raises(click.BadParameter):
        parse_only("hdf5_tools", ["pack", "a", "b", "--nodes", "four"])


@pytest.mark.slow
def test_every_documented_command_runs_as_written(world):
    failures, counts, pending_ok = [], {}, []
    for n, (where, cmd) in enumerate(documented_commands()):
        if foreign(cmd) or cmd in SKIP:
            continue
        status, detail = run_command(where, cmd, world, n)
        if cmd in PENDING:
            if status == "ok":
                pending_ok.append(f"{where}: {cmd}")
            continue
        counts[detail if status == "ok" else "refused"] = counts.get(detail if status == "ok" else "refused", 0) + 1
        if status != "ok":
            failures.append(f"{where}: {cmd}\n    -> {detail}")
    assert not failures, "documented commands that fail:\n" + "\n".join(failures)
    assert not pending_ok, "PENDING lines that now run (remove them from PENDING):\n" + "\n".join(pending_ok)
    assert counts.get("run", 0) >= 8 and counts.get("dry-run", 0) >= 3 and counts.get("parsed", 0) >= 10, counts
