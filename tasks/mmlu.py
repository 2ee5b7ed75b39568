"""MMLU: multiple-choice questions scored by the model's next-token logits for " A".." D".

The prompt ends in "Answer:"; the model's choice is whichever of the four letter tokens gets the
highest logit there, so no text is generated. With k shots, the first k questions of the
subject's dev split are shown with their answers before each question (the protocol of the MMLU
paper); without a dev split, the first k test questions serve and are not scored themselves.

The data: the official data.tar holds one headerless CSV per subject and split
(data/test/SUBJECT_test.csv, data/dev/SUBJECT_dev.csv: question, four choices, answer letter).
`convert_mmlu_tar` turns them into our JSON lines, deterministically, so the converted test file
is checked against the manifest's sha256.

The scoring only needs `next_token_logits(ids) -> (vocab,) array` and a tokenizer with
`.encode`, so it can be tested with rigged stand-ins; `model_next_token_logits` adapts a GPT-2.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import tarfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

LETTERS = ("A", "B", "C", "D")


class MMLUDataError(ValueError):
    """The MMLU file, a subject choice or the model's output cannot be used."""


class Encoder(Protocol):
    def encode(self, text: str) -> Sequence[int]: ...


@dataclass(frozen=True)
class Question:
    question: str
    choices: tuple[str, str, str, str]
    answer: str  # one of LETTERS
    subject: str


def load_mmlu(path: str | os.PathLike | None = None) -> list[Question]:
    """Questions of an MMLU JSON-lines file (default: the cached "mmlu" dataset), in file order.

    Rows whose correct_answer is not one of A-D are dropped: the file holds two stray rows
    whose answer is the literal word "answer" (leftover header lines).
    """
    if path is None:
        from tasks.data import ensure_dataset
        path = ensure_dataset("mmlu", progress=False)  # clear MissingFileError when absent
    path = Path(path)
    if not path.is_file():
        raise MMLUDataError(f"MMLU file not found: {path}")
    keys = ("question", "answer_a", "answer_b", "answer_c", "answer_d", "correct_answer", "topic")
    questions = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise MMLUDataError(f"{path} line {lineno} is not valid JSON: {err}") from None
            if not isinstance(row, dict) or any(k not in row for k in keys):
                raise MMLUDataError(f"{path} line {lineno} lacks one of the keys {', '.join(keys)}")
            answer = str(row["correct_answer"]).strip()
            if answer not in LETTERS:
                continue
            choices = tuple(str(row[f"answer_{x.lower()}"]) for x in LETTERS)
            questions.append(Question(str(row["question"]), choices, answer,
                                      str(row["topic"]).strip()))
    if not questions:
        raise MMLUDataError(f"{path} holds no usable MMLU question")
    return questions


def group_by_subject(questions: Sequence[Question]) -> dict[str, list[Question]]:
    """Questions per subject, each list in file order, subjects sorted by name."""
    groups: dict[str, list[Question]] = defaultdict(list)
    for q in questions:
        groups[q.subject].append(q)
    return dict(sorted(groups.items()))


def select_subjects(groups: dict[str, list[Question]], subjects: Sequence[str] | None
                    ) -> dict[str, list[Question]]:
    """The groups of the named subjects ("high_school_physics" and "high school physics" both
    work); all of them when `subjects` is empty or None."""
    if not subjects:
        return groups
    chosen, unknown = {}, []
    for name in subjects:
        key = name.replace("_", " ").strip().lower()
        if key in groups:
            chosen[key] = groups[key]
        else:
            unknown.append(name)
    if unknown:
        raise MMLUDataError(f"unknown MMLU subject(s): {', '.join(unknown)}. "
                            f"Known subjects: {', '.join(groups)}")
    return dict(sorted(chosen.items()))


def format_question(q: Question, with_answer: bool = False) -> str:
    """The question, its lettered choices and "Answer:" (followed by " X\\n\\n" for a shot)."""
    text = q.question + "".join(f"\n{x}. {c}" for x, c in zip(LETTERS, q.choices)) + "\nAnswer:"
    return text + f" {q.answer}\n\n" if with_answer else text


def build_prompt(q: Question, shots: Sequence[Question] = ()) -> str:
    header = f"The following are multiple choice questions (with answers) about {q.subject}.\n\n"
    return header + "".join(format_question(s, True) for s in shots) + format_question(q)


def split_shots(items: Sequence[Question], shots: int, limit: int | None = None
                ) -> tuple[list[Question], list[Question]]:
    """(the first `shots` questions, the next ones to score: at most `limit` of them)."""
    if shots < 0:
        raise MMLUDataError(f"shots must be >= 0, got {shots}")
    if limit is not None and limit < 1:
        raise MMLUDataError(f"limit must be >= 1, got {limit}")
    rest = list(items[shots:])
    return list(items[:shots]), rest if limit is None else rest[:limit]


def letter_token_ids(tokenizer: Encoder) -> list[int]:
    """Token ids of " A", " B", " C", " D" (each must be a single token)."""
    ids = []
    for x in LETTERS:
        toks = list(tokenizer.encode(f" {x}"))
        if len(toks) != 1:
            raise ValueError(f"{f' {x}'!r} is {len(toks)} tokens for this tokenizer, not one")
        ids.append(int(toks[0]))
    return ids


@dataclass
class MMLUResult:
    per_subject: dict[str, tuple[int, int]] = field(default_factory=dict)  # (correct, total)

    @property
    def correct(self) -> int:
        return sum(c for c, _ in self.per_subject.values())

    @property
    def total(self) -> int:
        return sum(n for _, n in self.per_subject.values())

    @property
    def accuracy(self) -> float:
        """Over all scored questions (so a large subject weighs more)."""
        return self.correct / self.total if self.total else 0.0

    @property
    def macro_accuracy(self) -> float:
        """Mean of the per-subject accuracies (each subject weighs the same)."""
        accs = [c / n for c, n in self.per_subject.values() if n]
        return sum(accs) / len(accs) if accs else 0.0

    def table(self) -> str:
        width = max([len(s) for s in self.per_subject] + [len("overall")])
        lines = [f"{'subject':<{width}}  {'correct':>7}  {'total':>5}  accuracy"]
        for s, (c, n) in self.per_subject.items():
            lines.append(f"{s:<{width}}  {c:>7}  {n:>5}  {c / n:8.2%}")
        lines.append(f"{'overall':<{width}}  {self.correct:>7}  {self.total:>5}  "
                     f"{self.accuracy:8.2%}")
        lines.append(f"(mean over {len(self.per_subject)} subjects: {self.macro_accuracy:.2%})")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"accuracy": self.accuracy, "macro_accuracy": self.macro_accuracy,
                "correct": self.correct, "total": self.total,
                "subjects": {s: {"correct": c, "total": n, "accuracy": c / n}
                             for s, (c, n) in self.per_subject.items()}}


def predict(q: Question, shots: Sequence[Question], next_token_logits: Callable,
            tokenizer: Encoder, letter_ids: Sequence[int], max_context: int) -> str:
    """The letter whose token the model scores highest right after the prompt."""
    ids = list(tokenizer.encode(build_prompt(q, shots)))[-max_context:]  # keep the question end
    logits = np.asarray(next_token_logits(ids)).reshape(-1)
    if logits.shape[0] <= max(letter_ids):  # e.g. a classifier's 2-way head
        raise MMLUDataError(f"the model gives {logits.shape[0]} next-token logits, too few for "
                            f"the letter tokens {list(letter_ids)}: is it a language model?")
    return LETTERS[int(np.argmax(logits[list(letter_ids)]))]


def evaluate_mmlu(questions: Sequence[Question], next_token_logits: Callable[[list[int]], np.ndarray],
                  tokenizer: Encoder, shots: int = 0, limit: int | None = None,
                  subjects: Sequence[str] | None = None, max_context: int = 1024,
                  progress: bool = True, dev: Sequence[Question] | None = None,
                  done: dict[tuple[str, int], bool] | None = None,
                  on_answer: Callable[[dict], None] | None = None) -> MMLUResult:
    """Accuracy per subject; `limit` caps the scored questions per subject.

    The `shots` examples of a subject are the first ones of its `dev` questions when given (every
    test question is then scored), else its first test questions (which are then not scored).
    `done` maps (subject, index among its scored questions) to whether it was answered right in
    an earlier, interrupted run: those are not asked again. `on_answer` sees each new answer.
    """
    from .common.progress import progress_bar

    if max_context < 1:
        raise MMLUDataError(f"max_context must be >= 1, got {max_context}")
    letter_ids = letter_token_ids(tokenizer)
    dev_groups = group_by_subject(dev) if dev is not None else None
    plan = []  # (subject, shots, questions to score)
    for subject, items in select_subjects(group_by_subject(questions), subjects).items():
        if dev_groups is None:
            examples, to_score = split_shots(items, shots, limit)
        else:
            examples, _ = split_shots(dev_groups.get(subject, []), shots)
            if len(examples) < shots:
                raise MMLUDataError(f"the dev split has {len(examples)} question(s) of {subject!r}, "
                                    f"fewer than the {shots} shots asked for")
            _, to_score = split_shots(items, 0, limit)
        if to_score:
            plan.append((subject, examples, to_score))
    if not plan:
        raise MMLUDataError(f"no question left to score: each chosen subject has at most "
                            f"{shots} question(s), all used as shots")

    result = MMLUResult()
    bar = progress_bar(total=sum(len(p[2]) for p in plan), desc="MMLU", unit="q", disable=not progress)
    done = done or {}
    for subject, examples, to_score in plan:
        correct = 0
        for i, q in enumerate(to_score):
            if (subject, i) in done:
                right = done[(subject, i)]
            else:
                right = predict(q, examples, next_token_logits, tokenizer, letter_ids, max_context) == q.answer
                if on_answer is not None:
                    on_answer({"subject": subject, "index": i, "correct": bool(right)})
            correct += right
            bar.update(1)
        result.per_subject[subject] = (correct, len(to_score))
    bar.close()
    return result


def model_next_token_logits(model, device: str | None = None) -> Callable[[list[int]], np.ndarray]:
    """Adapt a minigrad model (`model(idx)` -> logits (1, T, vocab)) to `next_token_logits`."""
    import minigrad as mg

    if device is None:
        device = getattr(model, "device", "cpu")
    if hasattr(model, "eval"):
        model.eval()  # no dropout while scoring

    def next_token_logits(ids: list[int]) -> np.ndarray:
        idx = mg.tensor(np.asarray([ids], dtype=np.int64), device=device)
        with mg.no_grad():
            logits = model(idx)
        return logits.numpy()[0, -1]

    return next_token_logits


# ----------------------------------------------------------------------------- download


# The order of the subjects in the cached mmlu.jsonl, whose sha256 the manifest records: it is not
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
        raise MMLUDataError(f"{where} is not UTF-8 text: {err}") from None
    topic = subject.replace("_", " ")
    lines = []
    for lineno, row in enumerate(csv.reader(io.StringIO(text, newline="")), 1):
        if len(row) != 6:
            raise MMLUDataError(f"{where} row {lineno} has {len(row)} fields, not 6 "
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
        raise MMLUDataError(f"{tar_path} is not a readable tar archive: {err}") from None
    if not found["test"]:
        raise MMLUDataError(f"{tar_path} holds no test/SUBJECT_test.csv file: is it MMLU's data.tar?")
    out = []
    for split in ("test", "dev"):
        lines = []
        for subject in sorted(found[split], key=_subject_key):
            lines += _csv_to_jsonl(found[split][subject], subject,
                                   f"{tar_path}: {split}/{subject}_{split}.csv")
        out.append("".join(lines))
    return out[0], out[1]


def dev_path() -> Path:
    """Where the dev split (the 5-shot examples) is cached: beside the test file."""
    from tasks.data import dataset_path
    return dataset_path("mmlu").with_name("mmlu_dev.jsonl")


def download_and_convert(entry, path: Path, progress: bool = True) -> Path:
    """Download data.tar from entry.url, write the test split at `path` once it matches
    entry.sha256/size, and the dev split beside it; nothing is written when it does not.

    No digest of data.tar itself is published: the converted test file is the check, and a dev
    split taken from the same verified archive is trusted with it.
    """
    from files import hub
    from files.atomic import atomic_write_text
    from urllib.parse import urlparse

    tar_rel = str(Path(entry.relpath).parent / Path(urlparse(entry.url).path).name)
    try:
        tar_path = hub.ensure_file(tar_rel, entry.url, progress=progress)
    except hub.MissingFileError as err:
        raise hub.MissingFileError(
            f"MMLU is missing and its archive could not be downloaded from {entry.url} "
            f"({err.reason}). Put the converted file at exactly {path} (sha256 {entry.sha256}), "
            f"or the archive at {err.path}.", url=entry.url, path=path, reason=err.reason) from err
    tmp = path.with_name(path.name + ".tmp")
    try:
        test, dev = convert_mmlu_tar(tar_path)
        tmp.write_bytes(test.encode("utf-8"))
        hub.verify_file(tmp, entry.sha256, entry.size)
    except (MMLUDataError, hub.ChecksumError) as err:
        tmp.unlink(missing_ok=True)
        tar_path.unlink(missing_ok=True)  # of no use: the next run downloads it afresh
        if isinstance(err, hub.ChecksumError):
            raise hub.ChecksumError(
                f"MMLU converted from {entry.url} is not the expected file: {err.details}. "
                f"The archive was deleted and nothing was saved at {path}.",
                err.expected, err.actual, path, err.details) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    atomic_write_text(path.with_name("mmlu_dev.jsonl"), dev)
    os.replace(tmp, path)
    tar_path.unlink(missing_ok=True)  # everything we need from it is now in the cache
    return path


def ensure_dev(progress: bool = True) -> Path:
    """The cached dev split, converted from data.tar when online if it is not there yet."""
    from files import hub
    from tasks.data import DATASETS, dataset_path

    path = dev_path()
    if path.is_file():
        return path
    entry = DATASETS["mmlu"]
    if hub.offline():
        raise hub.MissingFileError(
            f"5-shot MMLU takes its examples from the dev split, which is not in the cache at "
            f"{path}: run once online (without MINIGRAD_OFFLINE) to convert it from {entry.url}, "
            f"or pass --shots-from test to show each subject's first test questions instead",
            url=entry.url, path=path, reason="offline mode: MINIGRAD_OFFLINE is set")
    download_and_convert(entry, dataset_path("mmlu"), progress)
    return path
