"""The Alpaca prompt format: one place for the text an instruction-tuned GPT-2 is trained on,
answers to, and is judged by (tasks.instruct, tasks.judge, tasks.serve).

    Below is an instruction that describes a task. Write a response that appropriately completes the request.

    ### Instruction:
    {instruction}

    ### Input:            <- only when the record's input is non-empty
    {input}

    ### Response:
"""
from __future__ import annotations

HEADER = ("Below is an instruction that describes a task. "
          "Write a response that appropriately completes the request.")
RESPONSE_HEADER = "\n\n### Response:\n"


def format_alpaca_prompt(record: dict) -> str:
    """The Alpaca-style prompt of a record: instruction and, when non-empty, its input."""
    text = f"{HEADER}\n\n### Instruction:\n{record['instruction']}"
    if record.get("input"):
        text += f"\n\n### Input:\n{record['input']}"
    return text


def format_prompt(record: dict) -> str:
    """The text the model continues: the Alpaca prompt up to and including "### Response:\\n"."""
    return format_alpaca_prompt(record) + RESPONSE_HEADER
