"""Tasks whose examples agzo generates itself: no files, no third-party text.

They exist for the embedded default demo, which must run offline: a small instruct model
(SmolLM2-135M-Instruct) should score clearly below what a few hundred zeroth-order steps
reach. Each task asks a question the model's representations already "know" the answer
to (sentiment of blatant reviews, category membership, number order) behind a Yes/No
answer format; small models answer such prompts with a strong bias toward one word, so
zero-shot accuracy is held down mostly by calibration, which fine-tuning fixes quickly.

Generation is deterministic given the seed (one `random.Random(seed)`), labels are
balanced in every split, examples never repeat and the three splits are disjoint. The
test split is generated first, so it depends only on the seed and `n_test`, not on the
train/dev sizes.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agzo.tasks import vocabulary as vocab
from agzo.tasks.base import Example
from agzo.tasks.errors import TaskDataError
from agzo.tasks.sampling import SplitSizes, TaskSplits, example_key

GENERATED_SIZES = SplitSizes(train=1000, dev=200, test=200)

NO_YES = (" No", " Yes")  # label 1 = "yes"

# How many fresh draws to try for one example before declaring the space exhausted.
_MAX_ATTEMPTS = 2000


def _article(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


def make_review(rng: random.Random, label: int) -> Example:
    """A blatantly positive (label 1) or negative (label 0) review: one or two clauses of
    the same polarity plus an optional closing remark."""
    positive = label == 1
    clauses = []
    for _ in range(rng.choice((1, 2))):
        topic = rng.choice(vocab.REVIEW_TOPICS)
        own = topic.positive if positive else topic.negative
        generic = vocab.GENERIC_POSITIVE if positive else vocab.GENERIC_NEGATIVE
        # Two thirds topic-specific predicates, which carry more varied wording.
        predicate = rng.choice(own) if rng.random() < 2 / 3 else rng.choice(generic)
        clauses.append(f"{rng.choice(topic.subjects)} {predicate}")
    joiner = rng.choice((" and ", ", and ", ". "))
    opener = rng.choice(vocab.REVIEW_OPENERS)
    # Only sentence starts are capitalised: the opener runs into the first clause
    # ("Honestly, the soup..."), and a ". " join starts a new sentence.
    later = [_capitalize(c) if joiner == ". " else c for c in clauses[1:]]
    text = _capitalize(opener + joiner.join([clauses[0], *later])) + "."
    closer = rng.choice(vocab.POSITIVE_CLOSERS if positive else vocab.NEGATIVE_CLOSERS)
    if closer:
        text += " " + closer
    return Example(
        prompt=f"Review: {text}\nQuestion: Is this review positive?\nAnswer:",
        candidates=NO_YES,
        label=label,
    )


def make_comparison(rng: random.Random, label: int) -> Example:
    """ "Is A larger than B?" for two distinct whole numbers. Digit counts are drawn
    independently, so many pairs are decided by length alone (easy) and the rest by
    the leading digits."""

    def number() -> int:
        digits = rng.choice((1, 2, 3))
        return rng.randint(1 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)

    a, b = number(), number()
    while a == b:
        b = number()
    if (a > b) != (label == 1):
        a, b = b, a
    word = rng.choice(("larger", "greater", "bigger"))
    return Example(
        prompt=f"Question: Is {a} {word} than {b}?\nAnswer:",
        candidates=NO_YES,
        label=label,
    )


_CATEGORY_NAMES = tuple(vocab.CATEGORIES)


def make_category(rng: random.Random, label: int) -> Example:
    """ "Is a banana a kind of fruit?" with a one-sentence lead-in for variety; label 1
    asks about the item's own category, label 0 about another one."""
    own = rng.choice(_CATEGORY_NAMES)
    item = rng.choice(vocab.CATEGORIES[own])
    others = [name for name in _CATEGORY_NAMES if name != own]
    asked = own if label == 1 else rng.choice(others)
    with_article, bare = asked
    thing = _article(item)
    question = rng.choice(
        (
            f"Is {thing} a kind of {bare}?",
            f"Is {thing} {with_article}?",
            f"Would you call {thing} {with_article}?",
            f"Is it true that {thing} is {with_article}?",
        )
    )
    lead = f"{rng.choice(vocab.PEOPLE)} {rng.choice(vocab.MENTION_VERBS)} {thing}."
    return Example(prompt=f"{lead}\nQuestion: {question}\nAnswer:", candidates=NO_YES, label=label)


@dataclass(frozen=True)
class GeneratedTask:
    """A binary task drawn from `make(rng, label)`; needs no data directory."""

    name: str
    description: str
    make: Callable[[random.Random, int], Example]
    metric: str = "accuracy"

    def default_sizes(self) -> SplitSizes:
        # Generated tasks back the quick embedded demo: 200 dev / 200 test examples keep
        # its evaluations to seconds, and ±3.5 points is enough to show a clear gain.
        return GENERATED_SIZES

    def load_splits(self, data_dir: Path | None, seed: int, sizes: SplitSizes) -> TaskSplits:
        rng = random.Random(seed)
        seen: set[tuple[str, tuple[str, ...]]] = set()
        test = self._draw(rng, sizes.test, seen, "test")
        dev = self._draw(rng, sizes.dev, seen, "dev")
        train = self._draw(rng, sizes.train, seen, "train")
        notes = [f"{self.name}: examples generated by agzo from its own word lists (seed {seed})"]
        if data_dir is not None:
            notes.append(f"{self.name}: generated task, data_dir {data_dir} was not used")
        return TaskSplits(train=train, dev=dev, test=test, notes=notes)

    def _draw(
        self, rng: random.Random, n: int, seen: set[tuple[str, tuple[str, ...]]], split: str
    ) -> list[Example]:
        # Exactly balanced labels (one extra 0 for odd n), in random order.
        labels = [i % 2 for i in range(n)]
        rng.shuffle(labels)
        out: list[Example] = []
        for label in labels:
            for _ in range(_MAX_ATTEMPTS):
                example = self.make(rng, label)
                key = example_key(example)
                if key not in seen:
                    seen.add(key)
                    out.append(example)
                    break
            else:
                raise TaskDataError(
                    f"{self.name}: ran out of distinct examples while drawing the {split} "
                    f"split ({len(seen)} generated so far); request smaller splits"
                )
        return out


GENERATED_TASKS: tuple[GeneratedTask, ...] = (
    GeneratedTask(
        name="synthetic-sentiment",
        description="generated restaurant/hotel/movie/product reviews; 'Is this review positive?'",
        make=make_review,
    ),
    GeneratedTask(
        name="synthetic-compare",
        description="generated number comparisons; 'Is A larger than B?'",
        make=make_comparison,
    ),
    GeneratedTask(
        name="synthetic-category",
        description="generated category membership; 'Is a banana a kind of fruit?'",
        make=make_category,
    ),
)
