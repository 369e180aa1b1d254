"""The in-context-learning baseline: k solved training examples before every prompt.

Each demonstration is a training example in the task's own template with its answer
filled in (the correct candidate, or the first gold answer), separated by a blank line as
in MeZO. Each evaluated example gets its own draw, from a generator seeded by (seed, its
position), so the baseline is reproducible and does not hinge on one lucky set. A chat
example gets its demonstrations as earlier user / assistant turns instead.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from agzo.seeding import derive_seed
from agzo.tasks.base import Example, GenerativeExample
from agzo.tasks.errors import TaskDataError

__all__ = ["SEPARATOR", "check_demonstrations", "demonstration_draws", "with_demonstrations"]

SEPARATOR = "\n\n"
# Keeps the demonstration draws apart from other uses of the run's seed.
_DEMONSTRATION_STREAM = 11


def check_demonstrations(k: int, pool: Sequence[Example]) -> None:
    """A clear error when the training pool cannot supply k distinct demonstrations."""
    if k > len(pool):
        raise TaskDataError(
            f"--demonstrations {k} is larger than the training pool ({len(pool)} examples); "
            f"use at most {len(pool)}, or more training data (--n-train)"
        )


def solved(example: Example) -> str:
    """An example in its template with its answer: what a demonstration shows."""
    if isinstance(example, GenerativeExample):
        return example.prompt + example.separator + example.answers[0]
    return example.prompt + example.candidates[example.label]


def _turns(example: GenerativeExample) -> list[tuple[str, str]]:
    context = [turn for turn in example.messages or () if turn[0] != "system"]
    return [*context, ("assistant", example.answers[0])]


def _demonstrated(example: Example, shots: list[Example]) -> Example:
    if isinstance(example, GenerativeExample) and example.messages:
        system = [turn for turn in example.messages if turn[0] == "system"]
        rest = [turn for turn in example.messages if turn[0] != "system"]
        earlier = [t for s in shots if isinstance(s, GenerativeExample) for t in _turns(s)]
        messages = tuple(system + earlier + rest)
        transcript = "\n".join(f"{role}: {content}" for role, content in messages)
        return GenerativeExample(
            transcript + "\nassistant:", answers=example.answers, messages=messages
        )
    prompt = SEPARATOR.join([*(solved(s) for s in shots), example.prompt])
    if isinstance(example, GenerativeExample):
        return GenerativeExample(
            prompt,
            answers=example.answers,
            separator=example.separator,
            stop=example.stop,
            keep=example.keep,
            group=example.group,
        )
    return Example(prompt, example.candidates, example.label, example.group)


def demonstration_draws(n_examples: int, pool_size: int, k: int, seed: int) -> list[list[int]]:
    """The pool indices of the k demonstrations before each of `n_examples` prompts, in
    the order they are shown. Example i's draw depends only on (seed, i), so the first
    examples of a list get the same demonstrations as when the whole list is evaluated."""
    return [
        random.Random(derive_seed(seed, index, _DEMONSTRATION_STREAM)).sample(range(pool_size), k)
        for index in range(n_examples)
    ]


def with_demonstrations(
    examples: Sequence[Example], pool: Sequence[Example], k: int, seed: int
) -> list[Example]:
    """`examples` with k demonstrations from `pool` drawn for each (see module doc)."""
    check_demonstrations(k, pool)
    draws = demonstration_draws(len(examples), len(pool), k, seed)
    return [
        _demonstrated(example, [pool[i] for i in draw]) for example, draw in zip(examples, draws)
    ]
