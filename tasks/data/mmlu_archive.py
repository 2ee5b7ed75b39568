"""MMLU's data.tar turned into our JSON lines, deterministically, so the converted test file is
checked against the manifest's sha256 (tasks/data/manifest.py).

The official data.tar holds one headerless CSV per subject and split (data/test/SUBJECT_test.csv,
data/dev/SUBJECT_dev.csv: question, four choices, answer letter). Each row becomes one JSON
object {question, answer_a..answer_d, correct_answer, topic}; the test split goes to the
manifest's mmlu/mmlu.jsonl, the dev split (the 5-shot examples) beside it as mmlu_dev.jsonl.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import tarfile
from pathlib import Path

from files.atomic import atomic_write_text
from files.derived import ArchiveError, derive_from_archive

DEV_FILE = "mmlu_dev.jsonl"


class MMLUDataError(ValueError):
    """The MMLU file, a subject choice or the model's output cannot be used."""


class MMLUArchiveError(MMLUDataError, ArchiveError):
    """An MMLU archive that cannot be converted (not a tar, no test split, a row of another shape)."""


# alphabetical (it came from a directory listing), so the conversion follows it to give the same
# bytes. Subjects not listed here (none in the official tar) follow in alphabetical order.
SUBJECT_ORDER = (
    "moral_scenarios", "us_foreign_policy", "public_relations", "global_facts",
    "electrical_engineering", "astronomy", "business_ethics", "jurisprudence",
    "high_school_chemistry", "college_physics", "professional_psychology", "marketing",
    "management", "virology", "international_law", "high_school_macroeconomics", "prehistory",
    "abstract_algebra", "high_school_physics", "formal_logic", "college_medicine",
    "high_school_us_history", "moral_disputes", "high_school_european_history",
    "clinical_knowledge", "world_religions", "high_school_microeconomics", "professional_law",
    "human_aging", "medical_genetics", "high_school_geography",
    "high_school_government_and_politics", "anatomy", "sociology", "logical_fallacies",
    "high_school_computer_science", "miscellaneous", "high_school_world_history",
    "professional_medicine", "high_school_biology", "high_school_statistics", "college_chemistry",
    "nutrition", "econometrics", "human_sexuality", "security_studies", "philosophy",
    "elementary_mathematics", "college_biology", "college_computer_science", "machine_learning",
    "professional_accounting", "college_mathematics", "high_school_mathematics",
    "high_school_psychology", "conceptual_physics", "computer_security",
)
_MEMBER = re.compile(r"(?:^|/)(test|dev)/([a-z_]+)_(test|dev)\.csv$")


def _subject_key(subject: str) -> tuple[int, str]:
    known = {s: i for i, s in enumerate(SUBJECT_ORDER)}
    return (known.get(subject, len(known)), subject)


def _csv_to_jsonl(data: bytes, subject: str, where: str) -> list[str]:
    """One JSON line per CSV row, every field kept verbatim (no stripping, no type guessing: a
    choice "0." stays "0.", "None" stays "None")."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise MMLUArchiveError(f"{where} is not UTF-8 text: {err}") from None
    topic = subject.replace("_", " ")
    lines = []
    for lineno, row in enumerate(csv.reader(io.StringIO(text, newline="")), 1):
        if len(row) != 6:
            raise MMLUArchiveError(f"{where} row {lineno} has {len(row)} fields, not 6 "
                                f"(question, 4 choices, answer)")
        record = {"question": row[0], "answer_a": row[1], "answer_b": row[2], "answer_c": row[3],
                  "answer_d": row[4], "correct_answer": row[5], "topic": topic}
        lines.append(json.dumps(record) + "\n")  # json's defaults: ASCII, ", " and ": "
    return lines


def convert_mmlu_tar(tar_path: str | os.PathLike) -> tuple[str, str]:
    """(test JSON lines, dev JSON lines) from MMLU's data.tar, subjects in SUBJECT_ORDER."""
    found: dict[str, dict[str, bytes]] = {"test": {}, "dev": {}}
    try:
        with tarfile.open(tar_path) as tar:
            for member in tar:
                m = _MEMBER.search(member.name)
                if member.isfile() and m and m.group(1) == m.group(3):
                    found[m.group(1)][m.group(2)] = tar.extractfile(member).read()
    except tarfile.TarError as err:
        raise MMLUArchiveError(f"{tar_path} is not a readable tar archive: {err}") from None
    if not found["test"]:
        raise MMLUArchiveError(f"{tar_path} holds no test/SUBJECT_test.csv file: is it MMLU's data.tar?")
    out = []
    for split in ("test", "dev"):
        lines = []
        for subject in sorted(found[split], key=_subject_key):
            lines += _csv_to_jsonl(found[split][subject], subject,
                                   f"{tar_path}: {split}/{subject}_{split}.csv")
        out.append("".join(lines))
    return out[0], out[1]


def dev_path_of(test_path: Path) -> Path:
    """Where the dev split (the 5-shot examples) is cached: beside the test file."""
    return test_path.with_name(DEV_FILE)


def download_and_convert(url: str, path: Path, archive_rel: str, sha256: str | None, size: int | None,
                         progress: bool = True) -> Path:
    """Download data.tar from `url`, write the test split at `path` once it matches sha256 and
    size, and the dev split beside it; nothing is written when it does not.

    No digest of data.tar itself is published: the converted test file is the check, and a dev
    split taken from the same verified archive is trusted with it.
    """
    dev: list[str] = []

    def convert(tar_path: Path, tmp: Path) -> None:
        test, dev_lines = convert_mmlu_tar(tar_path)
        tmp.write_bytes(test.encode("utf-8"))
        dev.append(dev_lines)

    derive_from_archive(path, url, archive_rel, convert, sha256=sha256, size=size, name="MMLU",
                        how="converted", put=f"the converted file (sha256 {sha256})", progress=progress)
    atomic_write_text(dev_path_of(path), dev[0])
    return path
