"""Shared plumbing for the command-line entry points: lazy subcommands, one-line errors."""
from __future__ import annotations

import importlib
import sys
from typing import Callable, Dict, Optional, Sequence, Tuple

from plumbing.errors import UserError


def user_error_types() -> Tuple[type, ...]:
    """Exception types that mean 'the user gave bad input'."""
    return (UserError,)


def run_subcommands(prog: str, commands: Dict[str, Tuple[str, str]], argv: Optional[Sequence[str]] = None) -> int:
    """Dispatch ``prog CMD ...`` to ``module.main(argv)``; modules are imported only when used.

    ``commands`` maps a subcommand to (module path, one-line help).
    A :class:`UserError` from any package becomes ``prog CMD: error: ...`` and exit code 2.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        width = max([len(c) for c in commands] or [1])
        lines = [f"usage: {prog} COMMAND [options]", "", "commands:"]
        lines += [f"  {c.ljust(width)}  {h}" for c, (_, h) in commands.items()]
        lines += ["", f"'{prog} COMMAND --help' shows a command's options."]
        print("\n".join(lines))
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd not in commands:
        print(f"{prog}: error: unknown command {cmd!r} (choose from {', '.join(commands)})", file=sys.stderr)
        return 2
    module = importlib.import_module(commands[cmd][0])
    entry: Callable[[Sequence[str]], int] = getattr(module, "main")
    try:
        rc = entry(rest)
    except user_error_types() as exc:
        print(f"{prog} {cmd}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog} {cmd}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)
