"""Errors that are the user's to fix: the CLI prints them as one line and exits non-zero."""

from typing import Optional


class UserError(Exception):
    """Bad input (a file, shard, index or option). The message names the culprit."""

    #: set by the click frame (:mod:`plumbing.cli`) to the command that met it, for the error line
    command_path: Optional[str] = None
