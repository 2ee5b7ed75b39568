"""Datasets: where each file comes from and how to get it.

The manifest below records every data file the tasks use: its place in the data cache
(`files.hub.cache_dir()`, the folder data/ unless MINIGRAD_DATA_DIR says otherwise), the URL it
is downloaded from when online, and its size and sha256 (or git blob id, when that is all its
publisher gives). A file taken from a zip names its member; one built from what the URL serves
(MMLU's CSVs) names its converter. The named corpora of `python -m tasks.prepare` are in
corpora.py, the batches for training in loaders.py and shards.py.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable
from urllib.parse import unquote, urlparse

from files import hub
from files.derived import ArchiveError, derive_from_archive
from files.hub import MissingFileError
from gpt2 import weights as gpt2_weights
from gpt2.config import HF_NAMES, PRESETS
from gpt2.tokenizer import TokenizerUnavailableError, get_tokenizer

from .mmlu_archive import download_and_convert

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
    return download_and_convert(entry.url, path, archive_rel(entry), entry.sha256, entry.size, progress)


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


def archive_rel(entry: DatasetEntry) -> str:
    """Where the archive an entry is taken from is cached: beside the file, under its URL's name."""
    return str(PurePosixPath(entry.relpath).parent / unquote(PurePosixPath(urlparse(entry.url).path).name))


def _fetch_from_archive(name: str, entry: DatasetEntry, path: Path, progress: bool) -> Path:
    """Download the zip at entry.url next to `path`, extract entry.member, verify it."""
    def extract(archive: Path, tmp: Path) -> None:
        try:
            with zipfile.ZipFile(archive) as zf:
                # Match on the base name: some archives nest their files in a folder.
                members = [m for m in zf.namelist() if PurePosixPath(m).name == entry.member]
                if not members:
                    raise ArchiveError(f"{archive} (from {entry.url}) has no file named {entry.member!r}; "
                                       f"put that file at exactly {path} yourself")
                with zf.open(members[0]) as src, open(tmp, "wb") as dst:
                    while chunk := src.read(1 << 20):
                        dst.write(chunk)
        except zipfile.BadZipFile as err:
            raise ArchiveError(f"{archive} downloaded from {entry.url} is not a valid zip ({err}); "
                               "it was deleted") from err

    return derive_from_archive(path, entry.url, archive_rel(entry), extract, sha256=entry.sha256,
                               size=entry.size, name=f"dataset {name!r}", how=f"({entry.member!r}) extracted",
                               put=f"the file {entry.member!r} from that zip", progress=progress)


def ensure_inputs(datasets: Iterable[str | None] = (), init: str | None = None, tokenizer: bool = True,
                  found: Iterable[MissingFileError] = ()) -> None:
    """Every cached file a command needs (GPT-2's tokenizer, the named datasets, the official
    weights when --init names a size), fetched or found before any work. When some cannot be had,
    ONE error (one line) lists them all, with `found` (what the caller already knows is missing),
    so that offline a user learns every file to fetch at once instead of one per run.

    Names that are not in the manifest (a path given instead) are left to the command. The
    official weights are looked for only when something else is missing, to complete the list:
    alone, they are the model loader's to fetch and to report."""
    needs: list[Callable[[], object]] = [get_tokenizer] if tokenizer else []
    needs += [lambda name=name: ensure_dataset(name) for name in datasets if name in DATASETS]
    missing = list(found) + _missing(needs)
    if missing and (init in PRESETS or init in HF_NAMES.values()):
        missing += _missing([lambda: gpt2_weights.download(init)])
    if len(missing) == 1:
        raise missing[0]
    if missing:
        first = next((e for e in missing if isinstance(e, MissingFileError)), None)
        listed = " ".join(f"({i}) " + " ".join(str(err).split()) for i, err in enumerate(missing, 1))
        raise MissingFileError(f"{len(missing)} inputs of this command are missing: {listed}",
                               url=first and first.url, path=first and first.path,
                               reason=first.reason if first else "")


def _missing(needs: list[Callable[[], object]]) -> list[Exception]:
    """The errors of the needs that found their file missing (each need is tried)."""
    errors: list[Exception] = []
    for need in needs:
        try:
            need()
        except (MissingFileError, TokenizerUnavailableError) as err:
            errors.append(err)
    return errors


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
