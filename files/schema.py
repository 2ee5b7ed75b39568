"""What a JSON file must hold, written as data, and checked on load with the file and the key in
the message:

    STATE = Obj({"step": Int(min=0), "files": Map(Str(pattern=SHA256)), "rng": Obj({...})})
    check(json.loads(text), STATE, "RUN/checkpoints/step_00000004/state.json")
    # SchemaError: RUN/.../state.json: 'step' must be an integer >= 0, got -5

A value is checked against a spec: Int, Num (finite unless told), Str, Bool, Maybe(spec) (null
allowed), List(item), Obj(fields) with required and optional keys, Map(value) with free keys, or
Anything. Booleans are not integers here (JSON's true is no step number), and integers count as
numbers. `Obj(..., extra=False)` refuses keys it does not know; by default they are allowed, so
that a file written by a newer version still reads.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

SHA256 = r"[0-9a-f]{64}"


class SchemaError(ValueError):
    """A file whose content is not what its schema says; the message names the file and the key."""

    def __init__(self, file: str, key: str, problem: str | None):
        """`problem` None: the key is missing."""
        self.file, self.key, self.problem = file, key, problem
        super().__init__(f"{file} lacks {key!r}" if problem is None else f"{file}: {f'{key!r} ' if key else ''}{problem}")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class Spec:
    what = "a value"

    def problem(self, value: Any) -> str | None:
        """None when `value` fits; else what is wrong, as 'must be ..., got ...'."""
        raise NotImplementedError

    def children(self, value: Any) -> list[tuple[str, Any, Spec]]:
        """(key suffix, value, spec) of what lies inside a fitting value."""
        return []


@dataclass(frozen=True)
class Anything(Spec):
    what = "any value"

    def problem(self, value):
        return None


INT64_MAX = 2 ** 63 - 1  # the largest integer an array index or a NumPy seed takes


def _num(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def bounds(lo, hi, above: bool = False, below: bool = False) -> str:
    """The range in words: 'at least 1', 'positive', 'at least 0 and at most 10', 'in [0, 1)'."""
    if lo is not None and hi is not None and below:
        return f"in {'(' if above else '['}{_num(lo)}, {_num(hi)})"
    low = "" if lo is None else "positive" if above and lo == 0 else \
        f"above {_num(lo)}" if above else f"at least {_num(lo)}"
    high = "" if hi is None else f"below {_num(hi)}" if below else \
        "at most 2**63-1" if hi == INT64_MAX else f"at most {_num(hi)}"
    return " and ".join(w for w in (low, high) if w)


@dataclass(frozen=True)
class Int(Spec):
    """An integer (not a boolean), min <= value <= max; max defaults to what an int64 holds."""
    min: int | None = None
    max: int | None = INT64_MAX

    @property
    def words(self) -> str:
        """The range, without the int64 cap (said only to a value past it)."""
        return bounds(self.min, None if self.max == INT64_MAX else self.max)

    @property
    def what(self) -> str:
        return "an integer" + (f", {self.words}" if self.words else "")

    def problem(self, value):
        if isinstance(value, bool) or not isinstance(value, int):
            return f"must be {self.what}, got {_shown(value)}"
        if self.min is not None and value < self.min:
            return f"must be {self.words}, got {_shown(value)}"
        if self.max is not None and value > self.max:
            return f"must be {bounds(self.min, self.max)}, got {_shown(value)}"
        return None


@dataclass(frozen=True)
class Num(Spec):
    """A number (an integer counts), finite unless told, in [min, max] (`above`: min excluded,
    `below`: max excluded)."""
    min: float | None = None
    max: float | None = None
    above: bool = False
    below: bool = False
    finite: bool = True

    @property
    def words(self) -> str:
        return bounds(self.min, self.max, self.above, self.below)

    @property
    def what(self) -> str:
        return f"a {'finite ' if self.finite else ''}number" + (f", {self.words}" if self.words else "")

    def problem(self, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"must be {self.what}, got {_shown(value)}"
        bad = (isinstance(value, float) and math.isnan(value)) or (self.finite and not math.isfinite(value))
        bad = bad or (self.min is not None and (value <= self.min if self.above else value < self.min))
        bad = bad or (self.max is not None and (value >= self.max if self.below else value > self.max))
        if bad:
            words = self.words or "a finite number"
            return f"must be {words}, got {'NaN' if value != value else _shown(value)}"
        return None


@dataclass(frozen=True)
class Str(Spec):
    choices: tuple[str, ...] | None = None
    pattern: str | None = None

    @property
    def what(self) -> str:
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        return "a string" + (f" matching {self.pattern}" if self.pattern else "")

    def problem(self, value):
        ok = isinstance(value, str) and (self.choices is None or value in self.choices) and \
            (self.pattern is None or re.fullmatch(self.pattern, value) is not None)
        return None if ok else f"must be {self.what}, got {_shown(value)}"


@dataclass(frozen=True)
class Bool(Spec):
    what = "true or false"

    def problem(self, value):
        return None if isinstance(value, bool) else f"must be {self.what}, got {_shown(value)}"


@dataclass(frozen=True)
class Maybe(Spec):
    """`spec`, or null."""
    spec: Spec

    @property
    def what(self) -> str:
        return f"{self.spec.what}, or null"

    def problem(self, value):
        if value is None:
            return None
        inner = self.spec.problem(value)
        return None if inner is None else inner.replace(self.spec.what, self.what, 1)

    def children(self, value):
        return [] if value is None else self.spec.children(value)


@dataclass(frozen=True)
class List(Spec):
    item: Spec = field(default_factory=Anything)
    length: int | None = None

    @property
    def what(self) -> str:
        return f"a list of {self.length} items" if self.length is not None else "a list"

    def problem(self, value):
        if not isinstance(value, list) or (self.length is not None and len(value) != self.length):
            return f"must be {self.what}, got {_shown(value)}"
        return None

    def children(self, value):
        return [(f"[{i}]", v, self.item) for i, v in enumerate(value)]


@dataclass(frozen=True)
class Obj(Spec):
    """A JSON object with these keys; `optional` ones may be absent; any other key is checked
    against `others` when given, allowed when `extra` (the default), else refused."""
    fields: Mapping[str, Spec] = field(default_factory=dict)
    optional: frozenset[str] = frozenset()
    extra: bool = True
    others: Spec | None = None
    what = "an object"

    def problem(self, value):
        if not isinstance(value, dict):
            return f"must be {self.what}, got {_shown(value)}"
        return None

    def children(self, value):
        known = [(f".{k}", value[k], spec) for k, spec in self.fields.items() if k in value]
        rest = [] if self.others is None else [(f".{k}", v, self.others) for k, v in value.items()
                                               if k not in self.fields]
        return known + rest

    def missing(self, value: dict) -> list[str]:
        return [k for k in self.fields if k not in value and k not in self.optional]

    def unknown(self, value: dict) -> list[str]:
        return [] if self.extra else [k for k in value if k not in self.fields]


@dataclass(frozen=True)
class Map(Spec):
    """A JSON object with free keys (matching `keys`), each value a `value`."""
    value: Spec = field(default_factory=Anything)
    keys: str | None = None
    what = "an object"

    def problem(self, value):
        if not isinstance(value, dict):
            return f"must be {self.what}, got {_shown(value)}"
        bad = [k for k in value if self.keys is not None and re.fullmatch(self.keys, k) is None]
        return f"has a key {bad[0]!r} that is not of the form {self.keys}" if bad else None

    def children(self, value):
        return [(f".{k}", v, self.value) for k, v in value.items()]


def check(value: Any, spec: Spec, file: str, key: str = "") -> None:
    """SchemaError (naming `file` and the key path, e.g. 'optimizer.groups[0].lr') at the first
    place where `value` does not fit `spec`."""
    stack = [(key, value, spec)]
    while stack:
        path, v, s = stack.pop()
        problem = s.problem(v)
        if problem is not None:
            raise SchemaError(file, path, problem)
        inner = s.spec if isinstance(s, Maybe) and v is not None else s
        if isinstance(inner, Obj):
            for k in inner.missing(v):
                raise SchemaError(file, _join(path, k), None)
            for k in inner.unknown(v):
                raise SchemaError(file, _join(path, k), "is not a key of this file")
        stack.extend((_join(path, suffix), child, child_spec)
                     for suffix, child, child_spec in reversed(s.children(v)))


def _join(path: str, suffix: str) -> str:
    if not suffix.startswith((".", "[")):
        suffix = "." + suffix
    return (path + suffix).lstrip(".")
