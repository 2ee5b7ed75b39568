"""How a conversation becomes the text the model continues, as Python (render_chat, used by the
server) and as the same rule in Jinja (CHAT_TEMPLATE, sent in /tokenizer_info for clients that
render on their side, such as lm-eval's remote tokenizer with --apply_chat_template).

Instruction-tuned runs (tasks.instruct) see the Alpaca format they were trained on: the header
(or the system messages), then each user turn as "### Instruction:" and each answer as
"### Response:", ending with an open "### Response:". One user message gives exactly
tasks.instruct's prompt. A plain language model just continues the turns' text, one paragraph each.
"""
from __future__ import annotations

from ..data.alpaca import HEADER as ALPACA_HEADER
from ..data.alpaca import RESPONSE_HEADER

# an instruct model's answer ends where the next turn would begin
INSTRUCT_STOPS = ["\n\n### Instruction:", "\n\n### Response:"]


def render_chat(messages: list[tuple[str, str]], instruct: bool) -> str:
    """The prompt for (role, text) pairs; roles system, user, assistant."""
    if not instruct:
        return "\n\n".join(text for _, text in messages)
    system = [text for role, text in messages if role == "system"]
    parts = ["\n\n".join(system) if system else ALPACA_HEADER]
    for role, text in messages:
        if role == "user":
            parts.append(f"### Instruction:\n{text}")
        elif role == "assistant":
            parts.append(f"### Response:\n{text}")
    return "\n\n".join(parts) + RESPONSE_HEADER


def _jinja(text: str) -> str:
    """A Python string as a Jinja string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


PLAIN_TEMPLATE = ("{% for m in messages %}{% if not loop.first %}{{ '\\n\\n' }}{% endif %}"
                  "{{ m['content'] }}{% endfor %}")
INSTRUCT_TEMPLATE = (
    "{% set system = messages | selectattr('role', 'in', ['system', 'developer']) | map(attribute='content')"
    " | list %}{{ system | join('\\n\\n') if system else " + _jinja(ALPACA_HEADER) + " }}"
    "{% for m in messages %}{% if m['role'] == 'user' %}{{ '\\n\\n### Instruction:\\n' + m['content'] }}"
    "{% elif m['role'] == 'assistant' %}{{ '\\n\\n### Response:\\n' + m['content'] }}{% endif %}{% endfor %}"
    "{{ " + _jinja(RESPONSE_HEADER) + " }}")


def chat_template(instruct: bool) -> str:
    """render_chat as a Jinja template over `messages` ([{role, content}], content a string)."""
    return INSTRUCT_TEMPLATE if instruct else PLAIN_TEMPLATE
