"""How a config field is declared: default, one line of doc and its checks, side by side (:func:`setting`).

A check is a :class:`Rule` (a predicate and the words of its error) or a :class:`Grammar` (a parser of
plumbing/parse.py); :meth:`Section.validate` runs every field's checks in declaration order. A failed
check raises the one shape of a config error, ``config: KEY WHAT (got VALUE)``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator, Optional, Tuple, Union

from plumbing.errors import UserError
from plumbing.parse import checked


def need(ok: bool, key: str, what: str, value: Any) -> None:
    """The one shape of a config error: ``config: KEY WHAT (got VALUE)``, a :class:`UserError`."""
    if not ok:
        raise UserError(f"config: {key} {what} (got {value!r})")


@dataclass(frozen=True)
class Scope:
    """What a check sees besides its value: its section, the section holding that (``up``) and the
    whole config (``root``); ``up``/``root`` are None when a section is validated on its own."""

    sec: Any
    up: Any = None
    root: Any = None


@dataclass(frozen=True)
class Rule:
    """``ok(value, scope)`` or the error ``config: KEY WHAT (got VALUE)``; ``key``/``got`` name another
    key and value in the message (a check over two fields), ``when(scope)`` says whether it applies."""

    ok: Callable[[Any, Scope], bool]
    what: Union[str, Callable[[Scope], str]]
    key: Optional[str] = None
    got: Optional[Callable[[Scope], Any]] = None
    when: Optional[Callable[[Scope], bool]] = None

    def check(self, prefix: str, name: str, value: Any, scope: Scope) -> None:
        if self.when is not None and not self.when(scope):
            return
        if not self.ok(value, scope):
            what = self.what(scope) if callable(self.what) else self.what
            need(False, prefix + (self.key or name), what, self.got(scope) if self.got else value)


@dataclass(frozen=True)
class Grammar:
    """A value one of plumbing/parse.py's grammars must accept: ``parse(text)`` raises ValueError.
    ``what`` set: each item of a list is parsed and a bad one is ``config: KEY WHAT: WHY (got ITEM)``;
    unset: the value itself, and a bad one is ``config: KEY: WHY`` (None is not parsed)."""

    parse: Callable[[str], Any]
    what: Optional[str] = None

    def check(self, prefix: str, name: str, value: Any, scope: Scope) -> None:
        if self.what is None:
            if value is not None:
                checked(self.parse, str(value), f"config: {prefix + name}")
            return
        for item in value:
            try:
                self.parse(str(item))
            except ValueError as exc:
                need(False, prefix + name, f"{self.what}: {exc}", item)


Check = Union[Rule, Grammar]


def rule(ok: Callable[[Any, Scope], bool], what: Union[str, Callable[[Scope], str]], **kw: Any) -> Rule:
    """A check of its own words: ``ok(value, scope)``; see :class:`Rule` for ``key``, ``got``, ``when``."""
    return Rule(ok, what, **kw)


def at_least(low: float, note: str = "") -> Rule:
    return Rule(lambda v, s: v >= low, f"must be >= {low}{note}")


def above(low: float) -> Rule:
    return Rule(lambda v, s: v > low, f"must be > {low}")


def within(low: float, high: float, open_high: bool = False) -> Rule:
    """``[low, high]``, or ``[low, high)`` with ``open_high``."""
    if open_high:
        return Rule(lambda v, s: low <= v < high, f"must be in [{low}, {high})")
    return Rule(lambda v, s: low <= v <= high, f"must be in [{low}, {high}]")


def one_of(choices: Tuple[Any, ...]) -> Rule:
    return Rule(lambda v, s: v in choices, f"must be one of {', '.join(map(str, choices))}")


def setting(default: Any, doc: str, *checks: Check) -> Any:
    """A field: its ``default`` (a list is copied for each instance), one line of ``doc``, its checks."""
    meta = {"doc": doc, "checks": checks}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def section(cls: type, doc: str) -> Any:
    """A field holding a whole section (a dataclass), built from its defaults."""
    return dataclasses.field(default_factory=cls, metadata={"doc": doc, "checks": ()})


def check_fields(sec: Any, prefix: str, up: Any = None, root: Any = None) -> None:
    """Every check of every field of ``sec`` (dotted keys under ``prefix``), then of its sub-sections."""
    scope = Scope(sec, up, root)
    for f in dataclasses.fields(sec):
        value = getattr(sec, f.name)
        for c in f.metadata.get("checks", ()):
            c.check(prefix, f.name, value, scope)
        if dataclasses.is_dataclass(value):
            check_fields(value, prefix + f.name + ".", sec, root)


def float_values(obj: Any, prefix: str = "") -> Iterator[Tuple[str, float]]:
    """``(dotted key, value)`` of every float (and float list item) in a config tree."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = prefix + f.name
        if dataclasses.is_dataclass(value):
            yield from float_values(value, key + ".")
        elif isinstance(value, float):
            yield key, value
        elif isinstance(value, list):
            yield from ((key, v) for v in value if isinstance(v, float))


class Section:
    """A config section: ``KEY`` is the name it has in the whole config (``data``, ``model``)."""

    KEY: ClassVar[str] = ""

    def validate(self) -> None:
        """Raise :class:`UserError` naming the first bad key (checks over other sections are skipped)."""
        check_fields(self, self.KEY + ".")


def validate_tree(root: Any) -> None:
    """The whole config: every float finite, then each section's checks (with the whole config in scope)."""
    for key, value in float_values(root):
        need(math.isfinite(value), key, "must be a finite number", value)
    check_fields(root, "", None, root)
