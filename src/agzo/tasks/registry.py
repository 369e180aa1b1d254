"""Looking tasks up by name, and the one entry point that loads their splits."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from agzo.tasks.benchmarks import BENCHMARK_TASKS
from agzo.tasks.generated import GENERATED_TASKS
from agzo.tasks.reading import READING_TASKS
from agzo.tasks.sampling import SplitSizes, TaskSplits, check_sizes


class Task(Protocol):
    """What every task kind (benchmark, generated, custom) offers.

    name: registry name ("sst2"); metric: the headline metric, "accuracy" or "f1".
    """

    @property
    def name(self) -> str: ...

    @property
    def metric(self) -> str: ...

    @property
    def description(self) -> str: ...

    def default_sizes(self) -> SplitSizes: ...

    def load_splits(self, data_dir: Path | None, seed: int, sizes: SplitSizes) -> TaskSplits: ...


_BUILTIN: tuple[Task, ...] = (*BENCHMARK_TASKS, *READING_TASKS, *GENERATED_TASKS)
_REGISTRY: dict[str, Task] = {task.name: task for task in _BUILTIN}


def available_tasks() -> list[str]:
    """Names of the built-in tasks: benchmarks first, then generated tasks."""
    return list(_REGISTRY)


def get_task(name: str) -> Task:
    """The built-in task called `name` (case-insensitive)."""
    task = _REGISTRY.get(name.strip().lower())
    if task is None:
        raise ValueError(f"unknown task {name!r}; valid names: {', '.join(_REGISTRY)}")
    return task


def resolve(task: str | Task) -> Task:
    return get_task(task) if isinstance(task, str) else task


def default_sizes(task: str | Task) -> SplitSizes:
    """MeZO's split sizes for a task: 1000/500/1000, dev 100 for CB and COPA."""
    return resolve(task).default_sizes()


def load_splits(
    task_name: str | Task,
    data_dir: str | Path | None = None,
    seed: int = 0,
    n_train: int | None = None,
    n_dev: int | None = None,
    n_test: int | None = None,
) -> TaskSplits:
    """Train/dev/test examples for a task, sampled deterministically from `seed`.

    task_name: a registered name (see `available_tasks`) or a task object such as a
        `CustomTask`.
    data_dir: the task's folder in its original format (or a parent folder holding it,
        like ../shared/data). None fetches benchmarks from the Hugging Face hub when
        `datasets` is installed; generated tasks need no data.
    n_train / n_dev / n_test: requested sizes; None takes `default_sizes(task)`. Smaller
        data yields smaller splits, the default-sized ones first, recorded in the returned
        `notes`; an explicit size that cannot be met is listed in `warnings`.
    """
    task = resolve(task_name)
    defaults = task.default_sizes()
    requested = {"train": n_train, "dev": n_dev, "test": n_test}
    sizes = SplitSizes(
        train=defaults.train if n_train is None else n_train,
        dev=defaults.dev if n_dev is None else n_dev,
        test=defaults.test if n_test is None else n_test,
        explicit=frozenset(name for name, n in requested.items() if n is not None),
    )
    check_sizes(sizes)
    return task.load_splits(None if data_dir is None else Path(data_dir), seed, sizes)
