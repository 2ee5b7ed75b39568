"""What a run was trained on, recorded in its run.json (`data`) and checked when it is resumed:
a changed data file or shard is refused, since the data position in a checkpoint and the loss
curve so far mean something only on the same data.

A data file (classify's rows, instruct's records) is identified by its size and sha256. Token
shards (pretrain) by each shard's name, size and sha256: the digest index.json gives
(tasks.prepare writes one for each shard), or the file's own where the shards are small enough
to hash at each resume (up to HASH_LIMIT bytes in all; past that, a shard without a digest in
index.json is identified by its size alone).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from files.hub import sha256_of
from files.schema import SchemaError

HASH_LIMIT = 1 << 30


def file_identity(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": sha256_of(path)}


def _index_digests(folder: Path) -> dict[str, str]:
    try:
        index = json.loads((folder / "index.json").read_text())
        return {s["file"]: s["sha256"] for s in index.get("shards", []) if isinstance(s.get("sha256"), str)}
    except (OSError, ValueError, TypeError, AttributeError, KeyError):
        return {}


def shard_identity(folder: Path, paths: Sequence[Path]) -> dict[str, Any]:
    """{"folder", "shards": [{"file", "bytes", "sha256"}]} of the shards a run reads."""
    sizes = [p.stat().st_size for p in paths]
    small = sum(sizes) <= HASH_LIMIT
    listed = _index_digests(folder)
    return {"folder": str(folder), "shards": [
        {"file": p.name, "bytes": n, "sha256": sha256_of(p) if small else listed.get(p.name)}
        for p, n in zip(paths, sizes)]}


def check_same_data(recorded: Mapping[str, Any] | None, now: Mapping[str, Any], run_json: Path) -> None:
    """On --resume: the data found now is the data the run recorded (a run.json from before
    this check, without `data`, is taken as it is)."""
    if recorded is None:
        return
    if "shards" in now:
        old, new = recorded["shards"], now["shards"]
        if [s["file"] for s in old] != [s["file"] for s in new]:
            raise SchemaError(str(run_json), "data.shards", f"lists {[s['file'] for s in old]}, but the data now "
                              f"holds {[s['file'] for s in new]}: resume with the data the run was trained on")
        for i, (a, b) in enumerate(zip(old, new)):
            if a["bytes"] != b["bytes"] or (a.get("sha256") and b.get("sha256") and a["sha256"] != b["sha256"]):
                raise SchemaError(str(run_json), f"data.shards[{i}]",
                                  f"({a['file']}, {a['bytes']} bytes, sha256 {str(a.get('sha256'))[:12]}) differs "
                                  f"from that shard now ({b['bytes']} bytes, sha256 {str(b.get('sha256'))[:12]}): "
                                  "the data changed since the run started; resume with the data it was trained on")
        return
    for key in ("bytes", "sha256"):
        if key in recorded and recorded[key] != now[key]:
            if recorded.get("source") not in (None, now.get("source")):  # another file, not the same one changed
                raise SchemaError(str(run_json), "args.data",
                                  f"reads {now.get('source')}, not {recorded['source']} ('data.source'), the data "
                                  "the run was trained on; resume with that data")
            raise SchemaError(str(run_json), f"data.{key}",
                              f"is {recorded[key]!r}, but {now.get('source', 'the data')} now has {now[key]!r}: the "
                              "data changed since the run started; resume with the data it was trained on")

