"""Chat-formatted examples: a `messages` list read from data, rendered with the model's
own chat template once its tokenizer is loaded.

A conversation trains on its last assistant turn, given every turn before it; the turns
after it, if any, are dropped. Until the tokenizer renders it, the example's prompt is a
plain "role: content" transcript, which only identifies it (duplicates, splits).
`--chat-template` renders any other task's prompt as a single user turn, so that an
instruct model sees the format it was tuned on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agzo.tasks.base import Example, GenerativeExample
from agzo.tasks.errors import TaskDataError
from agzo.tasks.records import Record

__all__ = ["ROLES", "apply_chat_template", "chat_example", "render_example"]

ROLES = ("system", "user", "assistant")


def chat_example(record: Record, field: str = "messages") -> GenerativeExample:
    """The example of one conversation: its last assistant turn is the answer."""
    raw = record.value(field)
    if not isinstance(raw, list) or not raw:
        raise TaskDataError(
            f"field '{field}' in {record.where()} should be a non-empty list of "
            "{'role': ..., 'content': ...} objects"
        )
    turns: list[tuple[str, str]] = []
    for i, message in enumerate(record.children(field)):
        role = message.text("role").strip().lower()
        if role not in ROLES:
            raise TaskDataError(
                f"{record.where()}: {field}[{i}] has unknown role {role!r} "
                f"(expected one of {', '.join(ROLES)})"
            )
        turns.append((role, message.text("content")))
    last = max((i for i, (role, _) in enumerate(turns) if role == "assistant"), default=None)
    if last is None:
        raise TaskDataError(
            f"{record.where()}: {field} has no assistant turn, so there is no answer to learn"
        )
    answer = turns[last][1]
    if not answer.strip():
        raise TaskDataError(f"{record.where()}: {field}[{last}], the assistant's answer, is empty")
    context = tuple(turns[:last])
    if not context:
        raise TaskDataError(f"{record.where()}: {field} starts with the assistant's answer")
    transcript = "\n".join(f"{role}: {content}" for role, content in context) + "\nassistant:"
    return GenerativeExample(transcript, answers=(answer,), messages=context)


def _template(tokenizer: Any, messages: Sequence[tuple[str, str]], generation: bool) -> str:
    rendered = tokenizer.apply_chat_template(
        [{"role": role, "content": content} for role, content in messages],
        tokenize=False,
        add_generation_prompt=generation,
    )
    return str(rendered)


def render_example(example: Example, tokenizer: Any) -> Example:
    """`example` with its prompt in the tokenizer's chat template.

    A classification prompt becomes a user turn; its candidates lose their leading space,
    since the assistant's turn starts a fresh line. A generative example keeps its answers;
    its target becomes the answer followed by the template's end of turn, which is also
    where decoding stops, so the loss covers exactly the assistant's turn.
    """
    if not isinstance(example, GenerativeExample):
        prompt = _template(tokenizer, [("user", example.prompt)], generation=True)
        candidates = tuple(c.lstrip() for c in example.candidates)
        return Example(prompt, candidates, example.label, example.group)
    messages = example.messages or (("user", example.prompt),)
    prompt = _template(tokenizer, messages, generation=True)
    answer = example.answers[0]
    full = _template(tokenizer, [*messages, ("assistant", answer)], generation=False)
    if not full.startswith(prompt + answer):
        raise ValueError(
            "the tokenizer's chat template does not render the assistant's answer right after "
            "the generation prompt, so its turn cannot be separated from the rest"
        )
    end_of_turn = full[len(prompt) + len(answer) :]
    if not end_of_turn.strip():
        end_of_turn = str(tokenizer.eos_token or "\n")
    return GenerativeExample(
        prompt, answers=example.answers, separator="", stop=end_of_turn, group=example.group
    )


def apply_chat_template(examples: Sequence[Example], tokenizer: Any) -> list[Example]:
    """Every example rendered with the tokenizer's chat template (see `render_example`)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "the model's tokenizer has no chat template; chat data and --chat-template need "
            "an instruct model that ships one (e.g. smollm2-135m)"
        )
    return [render_example(example, tokenizer) for example in examples]
