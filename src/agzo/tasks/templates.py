"""Prompt templates and verbalizers for the benchmark tasks: one function per task that
turns a raw record into `Example`s.

Conventions, so that every task reads the same way:

* Candidate index == the data set's own label id. RTE/CB list entailment first, so their
  candidates are (" Yes", " No"[, " Maybe"]); the boolean tasks (BoolQ, WiC, WSC,
  MultiRC) store False/True (or 0/1), so theirs are (" No", " Yes") and index 1 means
  "true". Binary F1 therefore uses positive class 1 for MultiRC.
* Candidates start with a space: they are appended verbatim to the prompt.
* Whitespace inside record text is collapsed (SST-2 and MultiRC carry double spaces and
  trailing blanks that only waste tokens).
* The wording follows the prompts of the MeZO paper (Malladi et al., 2023); SST-2's
  default is an explicit "Sentiment (positive or negative):" prompt that small instruct
  models answer far better than MeZO's "It was", which stays available as `sst2-mezo`.
"""

from __future__ import annotations

import re
from pathlib import Path

from agzo.tasks.base import Example
from agzo.tasks.errors import TaskDataError
from agzo.tasks.records import Record

YES_NO = (" Yes", " No")  # index 0 = entailment (RTE, CB)
YES_NO_MAYBE = (" Yes", " No", " Maybe")  # CB: entailment, contradiction, neutral
NO_YES = (" No", " Yes")  # index 1 = true (BoolQ, WiC, WSC, MultiRC answers)

RTE_LABELS = ("entailment", "not_entailment")
CB_LABELS = ("entailment", "contradiction", "neutral")
BOOL_LABELS = ("false", "true")
BINARY_LABELS = ("0", "1")


def clean(text: str) -> str:
    """Collapse runs of whitespace to single spaces and trim the ends."""
    return " ".join(text.split())


def label_index(record: Record, field: str, names: tuple[str, ...]) -> int:
    """The label of `record` as a candidate index.

    Accepts the spellings found in the wild for the same label: the SuperGLUE JSONL
    names ("entailment"), JSON booleans, integer ids (the Hugging Face copies use those)
    and digit strings (TSV). `names[i]` is the textual name of label id i.
    """
    value = record.value(field)
    index: int | None = None
    if isinstance(value, bool):
        index = int(value)
    elif isinstance(value, int):
        index = value
    elif isinstance(value, str):
        token = value.strip().lower()
        if token in names:
            index = names.index(token)
        elif token.lstrip("-").isdigit():
            index = int(token)
    if index is None or not 0 <= index < len(names):
        raise TaskDataError(
            f"field '{record.prefix}{field}' in {record.where()} has unexpected label "
            f"{value!r} (expected one of {', '.join(names)} or an id 0..{len(names) - 1})"
        )
    return index


# --- SST-2 -------------------------------------------------------------------------


def sst2_instruct(record: Record) -> list[Example]:
    """Default SST-2 prompt: names both label words, so the model knows its options."""
    sentence = clean(record.text("sentence"))
    return [
        Example(
            prompt=f"Review: {sentence}\nSentiment (positive or negative):",
            candidates=(" negative", " positive"),
            label=label_index(record, "label", BINARY_LABELS),
        )
    ]


def sst2_mezo(record: Record) -> list[Example]:
    """MeZO's SST-2 prompt: `<sentence> It was` + great/terrible."""
    sentence = clean(record.text("sentence"))
    return [
        Example(
            prompt=f"{sentence} It was",
            candidates=(" terrible", " great"),
            label=label_index(record, "label", BINARY_LABELS),
        )
    ]


# --- Entailment (RTE, CB) ----------------------------------------------------------


def rte(record: Record) -> list[Example]:
    premise = clean(record.text("premise"))
    hypothesis = clean(record.text("hypothesis"))
    return [
        Example(
            prompt=f'{premise}\nDoes this mean that "{hypothesis}" is true? Yes or No?',
            candidates=YES_NO,
            label=label_index(record, "label", RTE_LABELS),
        )
    ]


def cb(record: Record) -> list[Example]:
    premise = clean(record.text("premise"))
    hypothesis = clean(record.text("hypothesis"))
    return [
        Example(
            prompt=f'{premise}\nDoes this mean that "{hypothesis}" is true? Yes, No or Maybe?',
            candidates=YES_NO_MAYBE,
            label=label_index(record, "label", CB_LABELS),
        )
    ]


# --- Yes/no questions (BoolQ, WiC, WSC) --------------------------------------------


def boolq(record: Record) -> list[Example]:
    passage = clean(record.text("passage"))
    question = clean(record.text("question")).rstrip("?")
    # BoolQ questions are lower-case fragments ("is ghost in the shell based on the anime").
    question = question[:1].upper() + question[1:]
    return [
        Example(
            prompt=f"{passage}\nQuestion: {question}? Yes or No?",
            candidates=NO_YES,
            label=label_index(record, "label", BOOL_LABELS),
        )
    ]


def wic(record: Record) -> list[Example]:
    word = clean(record.text("word"))
    first = clean(record.text("sentence1"))
    second = clean(record.text("sentence2"))
    return [
        Example(
            prompt=(
                f"Sentence 1: {first}\nSentence 2: {second}\n"
                f"Is the word '{word}' used in the same way in the two sentences above? "
                "Yes or No?"
            ),
            candidates=NO_YES,
            label=label_index(record, "label", BOOL_LABELS),
        )
    ]


_LEADING_ARTICLE = re.compile(r"^(The|A|An) ")


def wsc(record: Record) -> list[Example]:
    text = clean(record.text("text"))
    target = record.child("target")
    pronoun = clean(target.text("span2_text"))
    # "refer to the demonstrators", not "refer to The demonstrators": the span is quoted
    # from the start of a sentence, but it sits mid-sentence in the question.
    referent = _LEADING_ARTICLE.sub(
        lambda m: m.group(1).lower() + " ", clean(target.text("span1_text"))
    )
    return [
        Example(
            prompt=(
                f'{text}\nIn the previous sentence, does the pronoun "{pronoun}" refer to '
                f"{referent}? Yes or No?"
            ),
            candidates=NO_YES,
            label=label_index(record, "label", BOOL_LABELS),
        )
    ]


# --- COPA --------------------------------------------------------------------------

_CONNECTIVES = {"cause": " because", "effect": " so"}
# A sentence-initial "I" must stay upper case when the choice becomes a continuation.
_KEEP_CAPITAL = re.compile(r"^I(\b|')")


def _as_continuation(sentence: str) -> str:
    sentence = clean(sentence)
    if not _KEEP_CAPITAL.match(sentence):
        sentence = sentence[:1].lower() + sentence[1:]
    return " " + sentence


def copa(record: Record) -> list[Example]:
    """The premise runs on into the choice: "The man turned on the faucet so" +
    " water flowed from the spout." The two choices are the (multi-token) candidates."""
    premise = clean(record.text("premise")).rstrip(".!")
    question = record.text("question").strip().lower()
    if question not in _CONNECTIVES:
        raise TaskDataError(
            f"field '{record.prefix}question' in {record.where()} should be 'cause' or "
            f"'effect', got {question!r}"
        )
    return [
        Example(
            prompt=premise + _CONNECTIVES[question],
            candidates=(
                _as_continuation(record.text("choice1")),
                _as_continuation(record.text("choice2")),
            ),
            label=label_index(record, "label", BINARY_LABELS),
        )
    ]


# --- MultiRC -----------------------------------------------------------------------


def multirc(record: Record) -> list[Example]:
    """One example per (question, answer) pair, each asking whether the answer is right.

    All answers to one question share `group`, so sampling keeps them in one split and
    exact match can be computed per question. The group id includes the file name
    because passage/question ids restart in every file.
    """
    passage = record.child("passage")
    text = clean(passage.text("text"))
    passage_id = record.data.get("idx", f"line{record.line}")
    source = Path(record.source).name
    examples: list[Example] = []
    for q_pos, question_record in enumerate(passage.children("questions")):
        question = clean(question_record.text("question"))
        question_id = question_record.data.get("idx", q_pos)
        group = f"{source}#{passage_id}/{question_id}"
        for answer_record in question_record.children("answers"):
            answer = clean(answer_record.text("text"))
            examples.append(
                Example(
                    prompt=(
                        f"{text}\nQuestion: {question}\nCandidate answer: {answer}\n"
                        "Is that the answer? Yes or No?"
                    ),
                    candidates=NO_YES,
                    label=label_index(answer_record, "label", BINARY_LABELS),
                    group=group,
                )
            )
    return examples
