"""MMLU: multiple-choice questions scored by the model's next-token logits for " A".." D".

The prompt ends in "Answer:"; the model's choice is whichever of the four letter tokens gets the
highest logit there, so no text is generated. With k shots, the first k questions of the
subject's dev split are shown with their answers before each question (the protocol of the MMLU
paper); without a dev split, the first k test questions serve and are not scored themselves.

The data: MMLU's data.tar converted into JSON lines (tasks/data/mmlu_archive.py), the test split
at the manifest's mmlu/mmlu.jsonl and the dev split beside it.

The scoring only needs `next_token_logits(ids) -> (vocab,) array` and a tokenizer with
`.encode`, so it can be tested with rigged stand-ins; `model_next_token_logits` adapts a GPT-2.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from files import hub

from ..common.jsonfiles import JsonLines, JsonLinesError
from ..common.progress import progress_bar
from ..data.manifest import DATASETS, archive_rel, dataset_path, ensure_dataset
from ..data.mmlu_archive import MMLUDataError, dev_path_of, download_and_convert

LETTERS = ("A", "B", "C", "D")


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
        path = ensure_dataset("mmlu", progress=False)  # clear MissingFileError when absent
    path = Path(path)
    if not path.is_file():
        raise MMLUDataError(f"MMLU file not found: {path}")
    keys = ("question", "answer_a", "answer_b", "answer_c", "answer_d", "correct_answer", "topic")
    questions = []
    try:
        for lineno, row in JsonLines(path):
            if not isinstance(row, dict) or any(k not in row for k in keys):
                raise MMLUDataError(f"{path}, line {lineno}: lacks one of the keys {', '.join(keys)}")
            answer = str(row["correct_answer"]).strip()
            if answer not in LETTERS:
                continue
            choices = tuple(str(row[f"answer_{x.lower()}"]) for x in LETTERS)
            questions.append(Question(str(row["question"]), choices, answer, str(row["topic"]).strip()))
    except JsonLinesError as err:
        raise MMLUDataError(str(err)) from None
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


# ----------------------------------------------------------------------------- the dev split


def dev_path() -> Path:
    """Where the dev split (the 5-shot examples) is cached: beside the test file."""
    return dev_path_of(dataset_path("mmlu"))


def ensure_dev(progress: bool = True) -> Path:
    """The cached dev split, converted from data.tar when online if it is not there yet."""
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
    download_and_convert(entry.url, dataset_path("mmlu"), archive_rel(entry), entry.sha256, entry.size, progress)
    return path
