"""The click frame every command line uses: lazy command groups, one-line errors, exit codes."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Type, Union

import click
from click.shell_completion import CompletionItem

from plumbing.errors import UserError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

#: command name -> (module whose ``command`` attribute is the click command, one-line help),
#: or a click command object (a small nested group).
Table = Dict[str, Union[Tuple[str, str], click.Command]]


def user_error_types() -> Tuple[Type[BaseException], ...]:
    """Exception types that mean 'the user gave bad input'."""
    return (UserError,)


class Command(click.Command):
    """A click command whose UserErrors remember the command path (``pixpro_of eval seg``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("context_settings", dict(CONTEXT_SETTINGS))
        super().__init__(*args, **kwargs)

    def parse_args(self, ctx: click.Context, args: list) -> list:
        ctx.meta["plumbing.words"] = list(args)  # the command's own words, for records such as results.json
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:  # some parser errors come without the context that names the command
            if exc.ctx is None:
                exc.ctx = ctx
            raise

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UserError as exc:
            if exc.command_path is None:
                exc.command_path = ctx.command_path
            raise


def words(ctx: click.Context) -> list:
    """The words the running command was given (after its name), as typed."""
    return list(ctx.meta.get("plumbing.words", []))


def command(name: Optional[str] = None, **kwargs: Any) -> Callable[[Callable[..., Any]], click.Command]:
    """``@command("verify", epilog="Example: ...")``: a click command using this frame's settings."""
    kwargs.setdefault("cls", Command)
    if "context_settings" in kwargs:
        kwargs["context_settings"] = {**CONTEXT_SETTINGS, **kwargs["context_settings"]}
    return click.command(name, **kwargs)


class LazyGroup(click.Group):
    """A click group whose commands live in modules imported only when a command is resolved."""

    def __init__(self, name: Optional[str] = None, table: Optional[Table] = None, **kwargs: Any) -> None:
        kwargs.setdefault("context_settings", dict(CONTEXT_SETTINGS))
        super().__init__(name=name, **kwargs)
        self.table: Table = dict(table or {})

    def list_commands(self, ctx: click.Context) -> list:
        return list(self.table)

    def short_help_of(self, name: str) -> str:
        entry = self.table[name]
        if isinstance(entry, click.Command):
            return entry.get_short_help_str(200)
        return entry[1]

    def get_command(self, ctx: click.Context, cmd_name: str) -> Optional[click.Command]:
        entry = self.table.get(cmd_name)
        if entry is None:
            return None
        if isinstance(entry, click.Command):
            return entry
        # One click object may serve under two names (``pixpro_of synth`` and ``python -m synth``):
        # the name it was invoked by is the context's, so messages name the right program.
        return importlib.import_module(entry[0]).command

    def resolve_command(self, ctx: click.Context, args: list) -> tuple:
        name = args[0]
        if name not in self.table and not name.startswith("-") and not ctx.resilient_parsing:
            ctx.fail(f"unknown command {name!r} (choose from {', '.join(self.table)})")
        return super().resolve_command(ctx, args)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, self.short_help_of(name)) for name in self.table]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def shell_complete(self, ctx: click.Context, incomplete: str) -> list:
        # Command names come from the table, so completing them imports no command module.
        items = [
            CompletionItem(name, help=self.short_help_of(name)) for name in self.table if name.startswith(incomplete)
        ]
        return items + click.Command.shell_complete(self, ctx, incomplete)


def group(name: str, table: Table, help: str, epilog: Optional[str] = None) -> LazyGroup:
    """A program or sub-program: ``group("hdf5_tools", COMMANDS, "Pack, verify ... shards")``."""
    return LazyGroup(name=name, table=table, help=help, epilog=epilog)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _prog_name(default: str) -> str:
    """The console script's own name (``pixpro-flow``) when run as one, else ``default``."""
    base = os.path.basename(sys.argv[0] or "")
    if not base or base.endswith(".py") or base in ("-c", "-m", "python", "python3"):
        return default
    return base


def run(cmd: click.Command, argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> int:
    """``main(argv) -> int`` of a program: one-line errors with exit 2, Ctrl-C 130, else the command's code.

    With ``argv`` None the words come from ``sys.argv`` and a console script's name becomes the
    program name (which also names its completion variable, ``_PIXPRO_FLOW_COMPLETE``).
    """
    prog = prog or cmd.name or "prog"
    if argv is None:
        args = sys.argv[1:]
        prog = _prog_name(prog)
    else:
        args = list(argv)
    complete_var = "_" + prog.replace("-", "_").replace(".", "_").replace(" ", "_").upper() + "_COMPLETE"
    try:
        rv = cmd.main(args=args, prog_name=prog, complete_var=complete_var, standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx is not None else exc.format_message())
        return 2
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else prog
        print(f"{where}: error: {_one_line(exc.format_message())}", file=sys.stderr)
        return 2
    except click.ClickException as exc:
        print(f"{prog}: error: {_one_line(exc.format_message())}", file=sys.stderr)
        return 2
    except click.Abort as exc:  # click's form of KeyboardInterrupt (and of an EOFError, which stays one)
        if isinstance(exc.__cause__, EOFError):
            raise exc.__cause__ from None
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except user_error_types() as exc:
        where = getattr(exc, "command_path", None) or prog
        print(f"{where}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return int(rv or 0)


def call(cmd: click.Command, argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> int:
    """Run one command as a Python function: its return code; bad input raises :class:`UserError`.

    A click usage error (unknown option, bad value) becomes a UserError with click's message.
    ``--help`` prints the help and returns 0.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        rv = cmd.main(args=args, prog_name=prog or cmd.name, standalone_mode=False)
    except click.UsageError as exc:
        raise UserError(_one_line(exc.format_message())) from None
    except click.ClickException as exc:
        raise UserError(_one_line(exc.format_message())) from None
    except click.Abort as exc:  # the caller sees the KeyboardInterrupt (or EOFError) itself
        if exc.__cause__ is not None:
            raise exc.__cause__ from None
        raise KeyboardInterrupt from None
    return int(rv or 0)


class Converted(click.ParamType):
    """A parameter type from a function ``text -> value`` that raises ValueError on bad text.

    ``click.option("--time-box", type=Converted(parse_duration, "DURATION"))``: the function's
    message becomes the one-line usage error.
    """

    def __init__(self, func: Callable[[str], Any], name: str) -> None:
        self.func = func
        self.name = name

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return self.func(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
