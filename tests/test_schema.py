"""files/schema.py: a JSON file checked against its spec names the file and the key path of the
first thing wrong; hypothesis mutates every key path of a document and the error must name it."""
from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings, strategies as st

from files.schema import (SHA256, Anything, Bool, Int, List, Map, Maybe, Num, Obj, SchemaError, Str, check)

SPEC = Obj({
    "step": Int(min=0, max=100),
    "lr": Num(min=0, above=True, max=1),
    "name": Str(choices=("a", "b")),
    "shuffle": Bool(),
    "limit": Maybe(Int(min=1)),
    "betas": List(Num(min=0, max=1), length=2),
    "dropout": Num(min=0, max=1, below=True),
    "groups": List(Obj({"lr": Num(min=0), "decay": Num(min=0)})),
    "files": Map(Str(pattern=SHA256), keys=r"[\w.]+"),
    "note": Anything(),
}, optional=frozenset({"note"}))
GOOD = {"note": {"free": [1]}, "step": 4, "lr": 0.002, "name": "a", "shuffle": True, "limit": None, "betas": [0.9, 0.999], "dropout": 0.1,
        "groups": [{"lr": 0.1, "decay": 0.0}, {"lr": 0.1, "decay": 0.1}], "files": {"model.safetensors": "0" * 64}}


def paths(value, prefix=()):
    """Every key path of a JSON value, as a tuple of keys and indices: ("groups", 1, "lr"), ..."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from paths(v, (*prefix, i))


def shown(path: tuple) -> str:
    """The key path as the error names it: groups[1].lr"""
    return "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in path).lstrip(".")


def replace_at(doc, path, new):
    if isinstance(path, str):
        import re
        path = [int(s[1:-1]) if s.startswith("[") else s for s in re.findall(r"\[\d+\]|[^.\[\]]+", path)]
    doc = copy.deepcopy(doc)
    target = doc
    for s in path[:-1]:
        target = target[s]
    target[path[-1]] = new
    return doc


def test_a_good_document_passes():
    check(GOOD, SPEC, "f.json")


@pytest.mark.parametrize("path,value,words", [
    ("step", -5, "'step' must be at least 0 and at most 100, got -5"),
    ("step", "6", "'step' must be an integer, at least 0 and at most 100, got '6'"),
    ("step", True, "got True"),
    ("step", 4.0, "got 4.0"),
    ("lr", float("nan"), "'lr' must be positive and at most 1, got NaN"),
    ("lr", float("inf"), "got inf"),
    ("lr", 0, "'lr' must be positive and at most 1, got 0"),
    ("name", "c", "'name' must be one of 'a', 'b', got 'c'"),
    ("limit", 0, "'limit' must be at least 1, got 0"),
    ("betas", [0.9], "'betas' must be a list of 2 items"),
    ("betas[1]", None, "'betas[1]' must be a finite number, at least 0 and at most 1, got None"),
    ("limit", "x", "'limit' must be an integer, at least 1, or null, got 'x'"),
    ("limit", 2 ** 64, "'limit' must be at least 1 and at most 2**63-1, got 18446744073709551616"),
    ("dropout", 1.5, "'dropout' must be in [0, 1), got 1.5"),
    ("groups[1].decay", -1, "'groups[1].decay' must be at least 0, got -1"),
    ("files.model", "xyz", "'files.model' must be a string matching"),
    ("groups[0]", [], "'groups[0]' must be an object, got []"),
])
def test_the_message_names_the_file_the_key_and_the_value(path, value, words):
    with pytest.raises(SchemaError) as err:
        check(replace_at(GOOD, path, value), SPEC, "run/f.json")
    assert str(err.value).startswith("run/f.json: ") and words in str(err.value)
    assert err.value.key == path


def test_missing_and_unknown_keys():
    doc = copy.deepcopy(GOOD)
    del doc["groups"][1]["lr"]
    with pytest.raises(SchemaError, match=r"f.json lacks 'groups\[1\].lr'"):
        check(doc, SPEC, "f.json")
    strict = Obj({"a": Int()}, extra=False)
    with pytest.raises(SchemaError, match="'b' is not a key of this file"):
        check({"a": 1, "b": 2}, strict, "f.json")
    check({k: v for k, v in GOOD.items()}, SPEC, "f.json")  # optional "note" absent is fine
    with pytest.raises(SchemaError, match="f.json: must be an object, got \\[1, 2\\]"):
        check([1, 2], SPEC, "f.json")
    with pytest.raises(SchemaError, match="has a key 'a b'"):
        check(replace_at(GOOD, "files", {"a b": "0" * 64}), SPEC, "f.json")


MUTATIONS = [None, float("nan"), -1, 2 ** 64, "fuzz", [7], {"x": 1}, True, 0.5, 1e308 * 10]


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from([p for p in paths(GOOD) if p]), new=st.sampled_from(MUTATIONS))
def test_any_mutated_key_is_refused_by_its_own_name_or_fits(key, new):
    doc = replace_at(GOOD, key, new)
    path = shown(key)
    try:
        check(doc, SPEC, "f.json")
    except SchemaError as e:
        # the mutated key, a key inside what replaced it (f.json lacks 'groups[1].lr'), or the list
        # it sits in (which lost its shape)
        assert e.key and (e.key.startswith(path) or path.startswith(e.key)), (e.key, path)
        assert str(e).startswith(("f.json: ", "f.json lacks "))
    else:  # accepted: only a value of the kind that was there (or null where null is allowed)
        old = dict(paths_and_values(GOOD))[key]
        number = (int, float)
        assert key[0] == "note" or new == old or (type(new) is type(old) and not isinstance(new, (dict, list))) \
            or (isinstance(new, number) and isinstance(old, number) and not isinstance(new, bool)) \
            or (key == ("limit",) and new is None) or (old is None and isinstance(new, int)), (key, new)


def paths_and_values(value, prefix=()):
    yield prefix, value
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        yield from paths_and_values(v, (*prefix, k))
