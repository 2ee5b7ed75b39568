"""Datasets: where each file comes from and how to get it.

The manifest below records every data file the tasks use: its place in the cache
(`files.hub.cache_dir()`), the URL it is downloaded from when online, and its size and
sha256 (or git blob id, when that is all its publisher gives). A file taken from a zip names its
member; one built from what the URL serves (MMLU's CSVs) names its converter. CORPORA lists the
named corpora of `python -m tasks.prepare`. Batches for training are in tasks/loaders.py.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Sequence
from urllib.parse import unquote, urlparse

from files import hub
from files.hub import MissingFileError

# ----------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class DatasetEntry:
    relpath: str  # where the file lives inside the cache
    url: str  # where it comes from (for an archive: the archive's URL)
    size: int | None  # bytes of the file at relpath (after extraction or conversion); None: unknown
    sha256: str | None  # of the file at relpath; None when only a git blob id is published
    description: str
    member: str | None = None  # name of the file inside the zip at `url`, if any
    git_blob: str | None = None  # git's id of the file at relpath (GitHub-hosted files)
    # name of a function in CONVERTERS that builds the file from what `url` serves (MMLU's CSVs)
    convert: str | None = None


_RASBT = "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main"

DATASETS: dict[str, DatasetEntry] = {
    "the-verdict": DatasetEntry(
        "the-verdict.txt",
        f"{_RASBT}/ch02/01_main-chapter-code/the-verdict.txt",
        20_479, "b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f",
        'Edith Wharton, "The Verdict" (public domain); 5,145 GPT-2 tokens'),
    "tinyshakespeare": DatasetEntry(
        "tinyshakespeare/input.txt",
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        1_115_394, "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        "Tiny Shakespeare (public domain), the usual small pretraining corpus"),
    "sms-spam": DatasetEntry(
        "sms_spam_collection/SMSSpamCollection",
        "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip",
        477_907, "7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d",
        "UCI SMS Spam Collection (CC BY 4.0): label<TAB>text, 5,574 lines",
        member="SMSSpamCollection"),
    "instruction-data": DatasetEntry(
        "instruction-data.json",
        f"{_RASBT}/ch07/01_main-chapter-code/instruction-data.json",
        203_524, "7e09a9af353722ca15c18bc580f093f9c39d3178335a75177319cb1e1d163944",
        "1,100 Alpaca-style records {instruction, input, output}"),
    "instruction-data-with-response": DatasetEntry(
        "instruction-data-with-response.json",
        f"{_RASBT}/ch07/01_main-chapter-code/instruction-data-with-response.json",
        29_279, "aced320504c77c98d957316eb9f3460945256226c36b5e9752bf7d49585eb943",
        "110 instruction records with a model_response field (example evaluation input)"),
    "mmlu": DatasetEntry(
        "mmlu/mmlu.jsonl",
        "https://people.eecs.berkeley.edu/~hendrycks/data.tar",
        8_135_441, "9f954bf40f4d38d2e49ca20ebc2025ec6cd50510717adb511d075bbd5199396c",
        "MMLU test set (MIT): 14,042 questions as JSON lines, converted from the CSVs of data.tar",
        convert="mmlu"),
    "hellaswag": DatasetEntry(
        "hellaswag/hellaswag_val.jsonl",
        "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl",
        None, None, "HellaSwag validation set (MIT): 10,042 items, a context and 4 endings each",
        git_blob="0f5ee25d72216f12317d5d8a7b92deafa423d81e"),
}


def _convert_mmlu(entry: DatasetEntry, path: Path, progress: bool) -> Path:
    from tasks.mmlu import download_and_convert  # tasks.mmlu imports this module
    return download_and_convert(entry, path, progress)


# Builders of files that are not served as they are: (entry, destination, progress) -> path
CONVERTERS = {"mmlu": _convert_mmlu}


class UnknownDatasetError(ValueError):
    """A dataset name that is not in the manifest."""


def _entry(name: str) -> DatasetEntry:
    try:
        return DATASETS[name]
    except KeyError:
        known = ", ".join(sorted(DATASETS))
        raise UnknownDatasetError(f"unknown dataset {name!r}; known datasets: {known}") from None


def dataset_path(name: str) -> Path:
    """Where the dataset's file lives in the cache (whether or not it is there yet)."""
    return hub.cache_dir().joinpath(*PurePosixPath(_entry(name).relpath).parts)


def ensure_dataset(name: str, progress: bool = True) -> Path:
    """Path of the dataset's file, downloading (and extracting) it first if it is missing."""
    entry = _entry(name)
    path = dataset_path(name)
    if entry.member is None and entry.convert is None:
        return hub.ensure_file(entry.relpath, entry.url, entry.sha256, entry.size, progress,
                               git_blob=entry.git_blob)
    if path.is_file():  # same cheap size check as hub.ensure_file does for cached files
        return hub.ensure_file(entry.relpath, entry.url, size=entry.size, progress=progress)
    if entry.convert is not None:
        if hub.offline():
            raise MissingFileError(
                f"dataset {name!r} is not in the cache and MINIGRAD_OFFLINE is set: put the file at "
                f"exactly {path} ({entry.size:,} bytes, sha256 {entry.sha256}), or run once online "
                f"to download {entry.url} and convert it", url=entry.url, path=path,
                reason="offline mode: MINIGRAD_OFFLINE is set")
        return CONVERTERS[entry.convert](entry, path, progress)
    return _fetch_from_archive(name, entry, path, progress)


def _fetch_from_archive(name: str, entry: DatasetEntry, path: Path, progress: bool) -> Path:
    """Download the zip at entry.url next to `path`, extract entry.member, verify it."""
    archive_name = unquote(PurePosixPath(urlparse(entry.url).path).name)
    archive_rel = str(PurePosixPath(entry.relpath).parent / archive_name)
    try:
        archive = hub.ensure_file(archive_rel, entry.url, progress=progress)
    except MissingFileError as err:
        raise MissingFileError(
            f"dataset {name!r} is missing and its zip could not be downloaded from {entry.url} "
            f"({err.reason}). Put the file {entry.member!r} from that zip at exactly {path} "
            f"(or the zip itself at {err.path}).", url=entry.url, path=path,
            reason=err.reason) from err

    tmp = path.with_name(path.name + ".tmp")
    try:
        with zipfile.ZipFile(archive) as zf:
            # Match on the base name: some archives nest their files in a folder.
            members = [m for m in zf.namelist() if PurePosixPath(m).name == entry.member]
            if not members:
                raise MissingFileError(
                    f"{archive} (from {entry.url}) has no file named {entry.member!r}; "
                    f"put that file at exactly {path} yourself", url=entry.url, path=path)
            with zf.open(members[0]) as src, open(tmp, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
        hub.verify_file(tmp, entry.sha256, entry.size)
    except (zipfile.BadZipFile, hub.ChecksumError, MissingFileError) as err:
        # The archive is of no use: drop it so the next run downloads it afresh.
        tmp.unlink(missing_ok=True)
        archive.unlink(missing_ok=True)
        if isinstance(err, zipfile.BadZipFile):
            raise ValueError(f"{archive} downloaded from {entry.url} is not a valid zip "
                             f"({err}); it was deleted") from err
        if isinstance(err, hub.ChecksumError):
            raise hub.ChecksumError(
                f"{entry.member!r} extracted from {entry.url} is not the expected file: "
                f"{err.details}. Nothing was saved at {path}.",
                err.expected, err.actual, path, err.details) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    archive.unlink(missing_ok=True)  # everything we need from it is now in the cache
    return path


def read_text(name_or_path: str | os.PathLike) -> str:
    """Text of a dataset (by manifest name) or of a file (by path), as UTF-8."""
    if isinstance(name_or_path, str) and name_or_path in DATASETS:
        path = ensure_dataset(name_or_path)
    else:
        path = Path(name_or_path)
        if not path.exists():
            known = ", ".join(sorted(DATASETS))
            raise FileNotFoundError(
                f"no such file: {path} (to use a dataset, give its name: {known})")
        if not path.is_file():
            raise IsADirectoryError(f"{path} is not a file")
    text = path.read_text(encoding="utf-8")
    if not text:
        raise ValueError(f"{path} is empty: there is no text to use")
    return text


# ----------------------------------------------------------------------------- corpora for tasks.prepare

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
    from .shards import read_header

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
    import json
    import shutil

    from files.atomic import atomic_write_text
    from .shards import read_header

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
    info = {"format": "llm.c token shards: 256 int32 header (20240520, 1, tokens), uint16 tokens",
            "corpus": name, "tokens": sum(s["tokens"] for s in shards),
            "val_tokens": shards[0]["tokens"], "shards": shards}
    atomic_write_text(out / "index.json", json.dumps(info, indent=1))
    return info
