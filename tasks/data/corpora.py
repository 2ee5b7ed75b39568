"""The named corpora of `python -m tasks.prepare`: their files, where to download them, and
putting already-tokenized shards in place."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Sequence

from files import hub
from files.atomic import atomic_write_text
from files.hub import MissingFileError

from .manifest import DATASETS
from .shards import FORMAT, read_header

_HF = "https://huggingface.co/datasets"


@dataclass(frozen=True)
class CorpusFile:
    relpath: str  # where the file lives inside the cache
    url: str
    # None: not yet recorded here. The file is then checked by what it must look like (a shard's
    # header against its size) and the sha256 computed on first download goes into index.json.
    sha256: str | None = None
    size: int | None = None


@dataclass(frozen=True)
class Corpus:
    kind: str  # "text" (.txt), "parquet", or "shards" (already tokenized, in llm.c's format)
    files: tuple[CorpusFile, ...]  # validation first where the corpus has its own
    description: str
    limit_first: int = 0  # --shards N keeps the first `limit_first` files and N more


def _from_dataset(name: str) -> CorpusFile:
    e = DATASETS[name]
    return CorpusFile(e.relpath, e.url, e.sha256, e.size)


CORPORA: dict[str, Corpus] = {
    "the-verdict": Corpus("text", (_from_dataset("the-verdict"),), DATASETS["the-verdict"].description),
    "tinyshakespeare": Corpus("text", (_from_dataset("tinyshakespeare"),),
                              DATASETS["tinyshakespeare"].description),
    "tinystories": Corpus("text", tuple(
        CorpusFile(f"tinystories/TinyStoriesV2-GPT4-{split}.txt",
                   f"{_HF}/roneneldan/TinyStories/resolve/main/TinyStoriesV2-GPT4-{split}.txt")
        for split in ("valid", "train")),
        "TinyStoriesV2-GPT4 (CDLA-Sharing-1.0): stories separated by <|endoftext|>, ~470M tokens"),
    "fineweb-edu-10B": Corpus("parquet", tuple(
        CorpusFile(f"fineweb-edu-10B/{i:03d}_00000.parquet",
                   f"{_HF}/HuggingFaceFW/fineweb-edu/resolve/main/sample/10BT/{i:03d}_00000.parquet")
        for i in range(14)),
        "FineWeb-Edu sample-10BT (ODC-By): 14 parquet files, ~10B tokens; needs pyarrow"),
    "fineweb10B": Corpus("shards", (
        CorpusFile("fineweb10B/fineweb_val_000000.bin",
                   f"{_HF}/kjj0/fineweb10B-gpt2/resolve/main/fineweb_val_000000.bin"),
        *(CorpusFile(f"fineweb10B/fineweb_train_{i:06d}.bin",
                     f"{_HF}/kjj0/fineweb10B-gpt2/resolve/main/fineweb_train_{i:06d}.bin")
          for i in range(1, 104))),
        "FineWeb 10B tokens already tokenized for GPT-2 in llm.c's format (kjj0/fineweb10B-gpt2): "
        "a validation shard and 103 training shards of 100M tokens", limit_first=1),
}


def corpus_files(name: str, shards: int | None = None) -> tuple[CorpusFile, ...]:
    """The files of a named corpus; `shards` keeps only that many training files."""
    corpus = CORPORA[name]
    if shards is None:
        return corpus.files
    if shards < 1:
        raise ValueError(f"--shards must be at least 1, got {shards}")
    return corpus.files[:corpus.limit_first + shards]


def ensure_corpus(name: str, shards: int | None = None, progress: bool = True) -> list[Path]:
    """Paths of a named corpus's files in the cache, downloading the missing ones.

    Files whose digest the manifest records are verified by it (hub.ensure_file). When any
    cannot be had, one MissingFileError names every missing file, its URL and where to put it.
    """
    files = corpus_files(name, shards)
    paths, missing = [], []
    for f in files:
        try:
            path = hub.ensure_file(f.relpath, f.url, f.sha256, f.size, progress)
        except MissingFileError as err:
            missing.append((f, err))
            continue
        if path.suffix == ".bin":
            try:
                read_header(path)  # no digest recorded: at least the header must fit the size
            except ValueError:
                path.unlink()  # useless; the next run downloads it afresh
                raise
        paths.append(path)
    if missing:
        where = "\n".join(f"  {err.path}  <-  {f.url}" for f, err in missing)
        reason = missing[0][1].reason
        raise MissingFileError(
            f"corpus {name!r}: {len(missing)} of {len(files)} files are missing and could not be "
            f"downloaded ({reason}). Download them and put each at the path shown (or set "
            f"MINIGRAD_DATA_DIR to a folder holding them):\n{where}",
            url=missing[0][0].url, path=missing[0][1].path, reason=reason)
    return paths


def link_pretokenized(name: str, paths: Sequence[Path], out: Path) -> dict:
    """Put already-tokenized shards (checked) in `out` (hard links, or copies across devices)
    and write an index.json with their token counts and sha256 (recorded on first download)."""
    out.mkdir(parents=True, exist_ok=True)
    shards = []
    for p in paths:
        n = read_header(p)
        dest = out / p.name
        if dest.resolve() != p.resolve() and not dest.exists():
            try:
                os.link(p, dest)
            except OSError:
                shutil.copyfile(p, dest.with_name(dest.name + ".tmp"))
                os.replace(dest.with_name(dest.name + ".tmp"), dest)
        entry = {f.relpath: f for f in CORPORA[name].files}[
            str(PurePosixPath(*p.relative_to(hub.cache_dir()).parts))]
        shards.append({"file": p.name, "tokens": n, "url": entry.url,
                       "sha256": entry.sha256 or hub.sha256_of(p),
                       "sha256_source": "manifest" if entry.sha256 else "computed on download"})
    info = {"format": FORMAT, "corpus": name, "tokens": sum(s["tokens"] for s in shards),
            "val_tokens": shards[0]["tokens"], "shards": shards}
    atomic_write_text(out / "index.json", json.dumps(info, indent=1))
    return info
