"""Deterministic train/dev/test sampling following the MeZO protocol.

The MeZO protocol samples 1,000 train / 500 dev / 1,000 test examples with a seed, the
test set from the task's validation file and train/dev from its training file. This
module holds the mechanics shared by every task kind:

* Examples that share a `group` (MultiRC's answers to one question) form a *unit* and
  are always kept in the same split, so per-question metrics are meaningful and no
  question leaks between train and test.
* Duplicate examples are dropped before sampling, so no split repeats an example and no
  example lands in two splits.
* All randomness comes from a `random.Random(seed)` the caller passes in, never the
  global RNG, so splits are reproducible and independent of other code.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from agzo.tasks.base import Example, GenerativeExample
from agzo.tasks.errors import TaskDataError

# Examples that must stay together in one split.
Unit = tuple[Example, ...]


class SplitSizes(NamedTuple):
    """Requested number of examples per split.

    explicit: the splits ("train", "dev", "test") whose size the user asked for, rather
    than the task's default: small data shrinks the others first, and an explicit size
    that cannot be met is a warning (`TaskSplits.warnings`), not a quiet note.
    """

    train: int
    dev: int
    test: int
    explicit: frozenset[str] = frozenset()

    @property
    def counts(self) -> tuple[int, int, int]:
        return (self.train, self.dev, self.test)


SPLIT_NAMES = ("train", "dev", "test")


# MeZO's sizes; CB and COPA override dev to 100 (see `BenchmarkTask.default_dev`).
MEZO_SIZES = SplitSizes(train=1000, dev=500, test=1000)


@dataclass
class TaskSplits:
    """The three splits of a task, plus human-readable notes on how they were made
    (carved from validation data, reduced sizes, duplicates removed...), which callers
    should print next to any reported number."""

    train: list[Example]
    dev: list[Example]
    test: list[Example]
    notes: list[str] = field(default_factory=list)
    # Problems with the numbers a run will report (explicit sizes not met); print loudly.
    warnings: list[str] = field(default_factory=list)


def check_sizes(sizes: SplitSizes) -> None:
    """Reject non-positive sizes early with the offending argument's name."""
    for name, value in zip(("n_train", "n_dev", "n_test"), sizes.counts):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def example_key(example: Example) -> tuple[str, tuple[str, ...]]:
    """What makes two examples the same: identical prompt and candidates (COPA shares
    prompts between different choice pairs, so the prompt alone is not enough). A
    generative example is its prompt alone: one question asked twice is one question,
    whichever answer each copy gives."""
    if isinstance(example, GenerativeExample):
        return (example.prompt, ())
    return (example.prompt, example.candidates)


def to_units(examples: Iterable[Example]) -> list[Unit]:
    """Group examples by `group` (first-appearance order); ungrouped ones stand alone."""
    grouped: dict[str, list[Example]] = {}
    order: list[list[Example]] = []
    for example in examples:
        if example.group is None:
            order.append([example])
            continue
        bucket = grouped.get(example.group)
        if bucket is None:
            bucket = grouped[example.group] = []
            order.append(bucket)
        bucket.append(example)
    return [tuple(bucket) for bucket in order]


def dedupe(units: Iterable[Unit], seen: set[tuple[str, tuple[str, ...]]]) -> tuple[list[Unit], int]:
    """Drop examples already in `seen` (and add the kept ones to it).

    Returns the surviving units (empty units vanish) and how many examples were dropped.
    Sharing `seen` across files keeps an example present in both the training and the
    validation file out of the training pool.
    """
    kept: list[Unit] = []
    dropped = 0
    for unit in units:
        fresh: list[Example] = []
        for example in unit:
            key = example_key(example)
            if key in seen:
                dropped += 1
                continue
            seen.add(key)
            fresh.append(example)
        if fresh:
            kept.append(tuple(fresh))
    return kept, dropped


def count(units: Sequence[Unit]) -> int:
    return sum(len(unit) for unit in units)


def take(units: Sequence[Unit], n: int) -> tuple[list[Example], list[Unit]]:
    """Take whole units, in order, until exactly `n` examples (or as close as whole units
    allow without exceeding it); return the examples taken and the untouched units.

    Units that would overshoot are skipped rather than ending the scan, so with many
    small units (MultiRC questions have ~5 answers) the count still comes out exact.
    """
    taken: list[Example] = []
    rest: list[Unit] = []
    for unit in units:
        if len(taken) + len(unit) <= n:
            taken.extend(unit)
        else:
            rest.append(unit)
    return taken, rest


def scale_to(sizes: SplitSizes, available: int) -> SplitSizes:
    """Shrink the sizes proportionally when the data holds fewer examples than requested
    in total, so no split is starved (each keeps at least one example). Explicitly
    requested sizes are kept while they fit: only the default ones shrink."""
    requested = sum(sizes.counts)
    if available >= requested:
        return sizes
    kept = sum(n for name, n in zip(SPLIT_NAMES, sizes.counts) if name in sizes.explicit)
    scaled = [name for name in SPLIT_NAMES if name not in sizes.explicit]
    if not sizes.explicit or not scaled or kept + len(scaled) > available:
        train, dev, test = (max(1, n * available // requested) for n in sizes.counts)
        return SplitSizes(train, dev, test, sizes.explicit)
    rest, shrinking = available - kept, sum(getattr(sizes, name) for name in scaled)
    shares = {name: max(1, getattr(sizes, name) * rest // shrinking) for name in scaled}
    shares[scaled[0]] += rest - sum(shares.values())  # what rounding left goes to the first
    train, dev, test = (shares.get(name, n) for name, n in zip(SPLIT_NAMES, sizes.counts))
    return SplitSizes(train, dev, test, sizes.explicit)


def split_with_train_pool(
    train_units: list[Unit],
    eval_units: list[Unit],
    sizes: SplitSizes,
    rng: random.Random,
) -> tuple[list[Example], list[Example], list[Example]]:
    """MeZO's standard split: test from the evaluation pool, dev then train from the
    training pool. Dev is taken first (as MeZO does: CB's 250 training examples give
    dev 100 / train 150) but never more than half the pool, so train is never starved."""
    eval_units = list(eval_units)
    rng.shuffle(eval_units)
    test, _ = take(eval_units, min(sizes.test, count(eval_units)))
    train, dev = _dev_then_train(list(train_units), sizes, rng)
    return train, dev, test


def split_carved(
    eval_units: list[Unit],
    extra_train_units: list[Unit],
    sizes: SplitSizes,
    rng: random.Random,
) -> tuple[list[Example], list[Example], list[Example]]:
    """Split when there is no usable training file: test from the evaluation pool, then
    train/dev from what is left of it plus any small training file (`extra_train_units`,
    e.g. FewGLUE's 32 examples). If the data is too small for the request, every split
    shrinks in proportion (see `scale_to`)."""
    targets = scale_to(sizes, count(eval_units) + count(extra_train_units))
    eval_units = list(eval_units)
    rng.shuffle(eval_units)
    test, rest = take(eval_units, min(targets.test, count(eval_units)))
    train, dev = _dev_then_train(rest + list(extra_train_units), targets, rng)
    return train, dev, test


def _dev_then_train(
    pool: list[Unit], sizes: SplitSizes, rng: random.Random
) -> tuple[list[Example], list[Example]]:
    """Train and dev from one pool, shuffled in place: dev first, never more than half
    of the pool, so that train is never starved."""
    rng.shuffle(pool)
    available = count(pool)
    dev, rest = take(pool, min(sizes.dev, available // 2))
    train, _ = take(rest, min(sizes.train, available - len(dev)))
    return train, dev


def split_three_pools(
    train_units: list[Unit],
    dev_units: list[Unit],
    test_units: list[Unit],
    sizes: SplitSizes,
    rng: random.Random,
) -> tuple[list[Example], list[Example], list[Example]]:
    """Each split sampled from its own pool (a custom folder with train, dev and test)."""
    out: list[list[Example]] = []
    for units, n in ((train_units, sizes.train), (dev_units, sizes.dev), (test_units, sizes.test)):
        units = list(units)
        rng.shuffle(units)
        out.append(take(units, min(n, count(units)))[0])
    return out[0], out[1], out[2]


def finish(
    task_name: str,
    parts: tuple[list[Example], list[Example], list[Example]],
    sizes: SplitSizes,
    notes: list[str],
    limited_by: str,
) -> TaskSplits:
    """Wrap the three splits, refusing empty ones and noting any that came out smaller
    than requested (`limited_by` says which data limited them)."""
    train, dev, test = parts
    for name, split in (("train", train), ("dev", dev), ("test", test)):
        if not split:
            raise TaskDataError(
                f"{task_name}: the {name} split is empty: {limited_by} holds too few usable "
                f"examples for train/dev/test (got {len(train)}/{len(dev)}/{len(test)})"
            )
    got = SplitSizes(len(train), len(dev), len(test))
    warnings = [
        f"{task_name}: {name} size {wanted} was asked for (--n-{name}), but {name} has "
        f"{have} examples ({limited_by} holds too few); the run uses train/dev/test = "
        f"{got.train}/{got.dev}/{got.test}"
        for name, wanted, have in zip(SPLIT_NAMES, sizes.counts, got.counts)
        if name in sizes.explicit and have < wanted
    ]
    if got.counts != sizes.counts:
        grouped = any(example.group is not None for example in (*train, *dev, *test))
        why = f"limited by {limited_by}" + (
            "; grouped examples (e.g. all answers to one question) stay in one split, "
            "so a split can also fall a few examples short"
            if grouped
            else ""
        )
        notes.append(
            f"{task_name}: train/dev/test = {got.train}/{got.dev}/{got.test}, requested "
            f"{sizes.train}/{sizes.dev}/{sizes.test} ({why})"
        )
    return TaskSplits(train=train, dev=dev, test=test, notes=notes, warnings=warnings)
