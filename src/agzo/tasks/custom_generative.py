"""User-defined generative tasks: prompt/completion records or chat conversations, from
the same files and folders as custom classification tasks (see `custom.py`).

    # {"question": "...", "answer": "..."} or "answers": ["...", "..."]
    task = custom_generative_task("qa.jsonl", template="Question: {question}\\nAnswer:",
                                  answer_field="answer")
    # {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", ...}]}
    task = custom_generative_task("chats.jsonl")

Both are scored by F1 / exact match of the generated answer (max over the gold answers).
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from pathlib import Path

from agzo.tasks.base import Example, GenerativeExample
from agzo.tasks.chat import chat_example
from agzo.tasks.custom import CustomTask, template_fields
from agzo.tasks.errors import TaskDataError
from agzo.tasks.records import Record

__all__ = ["CustomGenerativeTask", "custom_generative_task", "protected_tail"]


def protected_tail(template: str) -> str:
    """The part of a template that left truncation must keep: from the start of the line
    holding its last placeholder ("Question: {question}\\nAnswer:" of a reading task)."""
    names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    if not names:
        return ""
    last = template.rfind("{" + names[-1])
    return template[template.rfind("\n", 0, last) + 1 :]


@dataclass(frozen=True)
class CustomGenerativeTask(CustomTask):
    """A generative task from a file or folder (split as `CustomTask` splits).

    template + answer_field: prompt/completion records; the field holds one answer (text)
        or a list of acceptable answers, the first one being the training target.
    neither: chat records, a `messages` list of {role, content}; the last assistant turn is
        the answer, rendered with the model's chat template.
    """

    template: str = ""
    label_words: dict[str, str] = field(default_factory=dict)
    answer_field: str | None = None
    metric: str = "f1"
    description: str = "user-defined generative task"

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        fields = template_fields(self.template) if self.template else ()
        object.__setattr__(self, "text_fields", fields)
        if bool(self.template) != (self.answer_field is not None):
            raise ValueError(
                "a generative custom task takes --template with --answer-field "
                "(prompt/completion data), or neither (chat data with a 'messages' list)"
            )

    @property
    def chat(self) -> bool:
        return self.answer_field is None

    def answers(self, record: Record) -> tuple[str, ...]:
        assert self.answer_field is not None
        value = record.value(self.answer_field)
        items = value if isinstance(value, list) else [value]
        texts = []
        for item in items:
            if isinstance(item, bool) or not isinstance(item, (str, int, float)):
                raise TaskDataError(
                    f"field '{self.answer_field}' in {record.where()} should hold an answer "
                    f"(text) or a list of answers, got {type(item).__name__} {item!r}"
                )
            if str(item).strip():
                texts.append(str(item).strip())
        if not texts:
            raise TaskDataError(
                f"{self.name}: empty answer in {record.where()} (field '{self.answer_field}' "
                f"holds {value!r}); every example needs at least one non-empty answer"
            )
        return tuple(dict.fromkeys(texts))

    def to_example(self, record: Record) -> Example:
        if self.chat:
            return chat_example(record)
        values = {name: record.text(name) for name in self.text_fields}
        tail = protected_tail(self.template)
        return GenerativeExample(
            self.template.format_map(values),
            answers=self.answers(record),
            keep=tail.format_map(values) if tail else "",
        )


def custom_generative_task(
    path: str | Path,
    template: str | None = None,
    answer_field: str | None = None,
    name: str = "custom",
    columns: str | None = None,
) -> CustomGenerativeTask:
    """A `CustomGenerativeTask` from command-line strings (backslash-n in the template
    becomes a newline, as for classification templates)."""
    from agzo.tasks.custom import parse_columns

    return CustomGenerativeTask(
        path=Path(path),
        template=(template or "").replace("\\n", "\n"),
        answer_field=answer_field,
        name=name,
        columns=parse_columns(columns) if columns else None,
    )
