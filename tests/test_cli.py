"""The click command lines: groups, --help with an example, one-line errors, exit codes, completion."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from plumbing.cli import LazyGroup, command, run
from plumbing.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# program name (as a console script) -> (module with `command` and `main`, its commands)
PROGRAMS = {
    "launcher": ("launcher.cli", ["render", "submit", "status", "cancel", "logs", "resume", "list"]),
    "hdf5_tools": ("hdf5_tools.cli", ["pack", "verify", "info", "flow", "viz", "stage"]),
    "pixpro_of": ("pixpro_of.__main__", ["convert", "eval", "demo", "reproduce", "smoke", "synth", "train", "viz"]),
    "pixpro-flow": ("flow.__main__", ["viz"]),
}
NESTED = {("pixpro_of", "eval"): ["flow", "seg"], ("pixpro_of", "viz"): ["pairs"]}


def _group(prog):
    return __import__(PROGRAMS[prog][0], fromlist=["command"]).command


def _main(prog):
    return __import__(PROGRAMS[prog][0], fromlist=["main"]).main


def _leaves():
    for prog, (_, names) in PROGRAMS.items():
        for name in names:
            if (prog, name) in NESTED:
                for sub in NESTED[(prog, name)]:
                    yield prog, [name, sub]
            else:
                yield prog, [name]


@pytest.mark.parametrize("prog", sorted(PROGRAMS))
def test_group_help_lists_every_command(prog):
    res = CliRunner().invoke(_group(prog), ["--help"], prog_name=prog)
    assert res.exit_code == 0, res.output
    assert res.output.startswith(f"Usage: {prog} ")
    listed = res.output.split("Commands:")[1]
    for name in PROGRAMS[prog][1]:
        assert f"\n  {name} " in listed, (name, listed)
    assert "Example" in res.output


@pytest.mark.parametrize("prog, path", [(p, ["eval"]) for p in ["pixpro_of"]] + [("pixpro_of", ["viz"])])
def test_nested_group_help_lists_its_commands(prog, path):
    res = CliRunner().invoke(_group(prog), [*path, "--help"], prog_name=prog)
    assert res.exit_code == 0, res.output
    for name in NESTED[(prog, path[0])]:
        assert f"\n  {name} " in res.output.split("Commands:")[1]


@pytest.mark.parametrize("prog, path", list(_leaves()), ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_every_command_help_has_an_example(prog, path):
    res = CliRunner().invoke(_group(prog), [*path, "--help"], prog_name=prog)
    assert res.exit_code == 0, res.output
    assert res.output.startswith(f"Usage: {prog} {' '.join(path)} ")
    assert "Example" in res.output, res.output


def test_synth_has_its_own_program_and_stays_a_pixpro_of_command():
    from synth.cli import command as synth_command

    res = CliRunner().invoke(synth_command, ["--help"], prog_name="python -m synth")
    assert res.exit_code == 0 and "--video-frames" in res.output and "Example" in res.output
    from pixpro_of.__main__ import command as top

    assert top.get_command(click.Context(top), "synth") is synth_command


@pytest.mark.parametrize(
    "prog, argv",
    [
        ("launcher", ["status", "--bogus"]),
        ("hdf5_tools", ["verify", "x.h5", "--deep", "--nope"]),
        ("pixpro_of", ["synth", "--out", "x", "--frames", "3"]),  # frames per video is --video-frames
        ("pixpro-flow", ["viz", "--flo"]),
    ],
)
def test_unknown_or_bad_option_is_one_line_exit_2(prog, argv, capsys):
    rc = _main(prog)(argv)
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"{prog if prog != 'pixpro-flow' else 'python -m flow'} {argv[0]}: error: "
    ), err


def test_unknown_command_is_one_line_exit_2(capsys):
    assert _main("hdf5_tools")(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("hdf5_tools: error: unknown command 'frobnicate'")


def test_user_error_is_one_line_exit_2(tmp_path, capsys):
    missing = tmp_path / "missing.h5"
    assert _main("hdf5_tools")(["info", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("hdf5_tools info: error: ") and str(missing) in err
    # inside a nested group the whole command path is named
    assert _main("pixpro_of")(["synth", "--out", str(tmp_path / "w"), "--size", "0x0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pixpro_of synth: error: --size: ")
    assert not (tmp_path / "w").exists()


def test_frame_exit_codes_and_the_function_form():
    @command("boom")
    @click.option("--what", type=click.Choice(["user", "ctrl-c", "code"]))
    def boom(what):
        """A command that fails on request."""
        if what == "user":
            raise UserError("bad input here")
        if what == "ctrl-c":
            raise KeyboardInterrupt
        return 75

    prog = LazyGroup("prog", {"boom": boom}, help="test program")
    assert run(prog, ["boom", "--what", "code"]) == 75
    assert run(prog, ["boom", "--what", "ctrl-c"]) == 130
    assert run(prog, ["boom", "--what", "user"]) == 2
    assert run(prog, ["boom", "--what", "nope"]) == 2
    assert run(prog, ["--help"]) == 0
    from plumbing.cli import call

    with pytest.raises(UserError, match="^bad input here$"):
        call(boom, ["--what", "user"])
    with pytest.raises(UserError, match="--what"):
        call(boom, ["--what", "nope"])


def test_errors_name_the_command(capsys):
    @command("boom")
    def boom():
        """Fails."""
        raise UserError("bad input here")

    assert run(LazyGroup("prog", {"sub": LazyGroup("sub", {"boom": boom})}), ["sub", "boom"]) == 2
    assert capsys.readouterr().err == "prog sub boom: error: bad input here\n"


def test_trainer_overrides_are_positional_arguments():
    from pixpro_of.train.cli import command as train

    ctx = train.make_context("train", ["--config", "cpu_small", "optim.base_lr=0.5", "--print-config", "data.k=2"])
    assert ctx.params["overrides"] == ("optim.base_lr=0.5", "data.k=2") and ctx.params["print_config"]


def test_launcher_passes_unknown_words_to_the_trainer():
    from launcher.options import parse_job_args

    args, extra = parse_job_args(["--gpus", "0", "--frames", "6", "optim.base_lr=0.5", "--run.epochs", "3"])
    assert args.frames == 6 and args.gpus == 0
    assert extra == ["optim.base_lr=0.5", "--run.epochs", "3"]


def test_help_imports_no_torch():
    code = (
        "import sys\n"
        "from launcher.cli import main as a\nfrom hdf5_tools.cli import main as b\n"
        "from pixpro_of.__main__ import main as c\nfrom flow.__main__ import main as d\n"
        "import contextlib, io\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    codes = [a(['--help']), b(['--help']), c(['--help']), c(['eval', '--help']), c(['viz', '--help']),"
        " d(['--help'])]\n"
        "print(codes, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[0, 0, 0, 0, 0, 0] False"


@pytest.mark.parametrize("prog", sorted(PROGRAMS))
@pytest.mark.parametrize(
    "shell, marker", [("bash", "complete -o nosort -F"), ("zsh", "#compdef"), ("fish", "complete")]
)
def test_completion_script_generation(prog, shell, marker):
    var = "_" + prog.replace("-", "_").upper() + "_COMPLETE"
    res = CliRunner().invoke(_group(prog), [], prog_name=prog, env={var: f"{shell}_source"})
    assert res.exit_code == 0, res.output
    assert marker in res.output and prog in res.output


def test_completion_of_command_names_and_options():
    res = CliRunner().invoke(
        _group("launcher"),
        [],
        prog_name="launcher",
        env={"_LAUNCHER_COMPLETE": "bash_complete", "COMP_WORDS": "launcher su", "COMP_CWORD": "1"},
    )
    assert res.output.split() == ["plain,submit"]
    res = CliRunner().invoke(
        _group("pixpro_of"),
        [],
        prog_name="pixpro_of",
        env={"_PIXPRO_OF_COMPLETE": "bash_complete", "COMP_WORDS": "pixpro_of eval s", "COMP_CWORD": "2"},
    )
    assert res.output.split() == ["plain,seg"]


@pytest.mark.parametrize("prog", sorted(PROGRAMS))
def test_console_script_completion(prog):
    script = BIN / prog
    if not script.exists():
        pytest.skip(f"{script} is not installed")
    var = "_" + prog.replace("-", "_").upper() + "_COMPLETE"
    env = dict(os.environ, **{var: "bash_source"})
    out = subprocess.run([str(script)], capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert f"_{prog.replace('-', '_')}_completion" in out.stdout
