"""Errors that are the user's to fix: the CLI prints them as one line and exits non-zero."""


class UserError(Exception):
    """Bad input (a file, shard, index or option). The message names the culprit."""
