"""Shell words for job scripts: quoting, and placeholders for the script's own variables.

Argv lists built in Python (submit commands, rank launchers) may hold words that only the job
knows when it runs: the next link's number, the job id it waits for, the host file, the arrays
it builds. Such a word is a *placeholder*, :func:`var` (``"${NAME}"`` inside any word) or
:func:`array` (a whole word that becomes ``"${name[@]}"``); :func:`sh_argv` renders an argv with
every other piece quoted by ``shlex.quote``.
"""

from __future__ import annotations

import re
import shlex
from typing import Iterable

_VAR = re.compile(r"@@\$([A-Za-z_][A-Za-z0-9_]*)@@")
_ARRAY = re.compile(r"^@@\[([A-Za-z_][A-Za-z0-9_]*)\]@@$")


def var(name: str) -> str:
    """A placeholder for the shell variable ``name``, usable inside a word (``"${name}"``)."""
    return f"@@${name}@@"


def array(name: str) -> str:
    """A placeholder word for every element of the shell array ``name`` (``"${name[@]}"``)."""
    return f"@@[{name}]@@"


def sh(value) -> str:
    """Quote for bash: a scalar -> one word, a list/tuple -> space-joined words."""
    if isinstance(value, (list, tuple)):
        return " ".join(sh(v) for v in value)
    if isinstance(value, bool):
        value = "1" if value else "0"
    text = str(value)
    quoted = shlex.quote(text)
    if quoted == text and "," in text:
        quoted = f"'{text}'"  # harmless, and shellcheck reads a bare comma in an array as a mistake
    return quoted


def sh_word(word: str) -> str:
    """One argv word with its placeholders as double-quoted variables and the rest quoted."""
    m = _ARRAY.match(word)
    if m:
        return f'"${{{m.group(1)}[@]}}"'
    out, pos = [], 0
    for m in _VAR.finditer(word):
        if m.start() > pos:
            out.append(sh(word[pos : m.start()]))
        out.append(f'"${{{m.group(1)}}}"')
        pos = m.end()
    if pos < len(word) or not out:
        out.append(sh(word[pos:]) if word[pos:] else ("''" if not out else ""))
    return "".join(out)


def sh_argv(words: Iterable[str]) -> str:
    """Quote an argv whose words may contain placeholders for shell variables."""
    return " ".join(sh_word(str(w)) for w in words)
