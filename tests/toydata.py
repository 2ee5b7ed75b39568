"""The small inputs the task tests share: labelled rows for tasks.classify and instruction
records for tasks.instruct, written into a test's folder."""
from __future__ import annotations

import json
from pathlib import Path

ROWS = ["ham\thello there friend", "spam\twin money now", "ham\tsee you soon", "spam\tfree prize click"]


def write_toy_inputs(d: Path) -> list[dict]:
    """d/toy.tsv (40 labelled rows) and d/instr.json (24 records, `input` "" or null by turns);
    returns the records."""
    (d / "toy.tsv").write_text("\n".join(ROWS * 10) + "\n")
    records = [{"instruction": f"Say the number {i}.", "input": "" if i % 2 else None, "output": f"{i}"}
               for i in range(24)]
    (d / "instr.json").write_text(json.dumps(records))
    return records
