"""Tasks: benchmark loaders, generated tasks, custom tasks, splits and metrics.

Every task yields `Example`s (prompt + candidate continuations + label index), sampled
into MeZO-style train/dev/test splits by `load_splits`.
"""

from agzo.tasks.base import Example
from agzo.tasks.custom import CustomTask, custom_task_from_spec
from agzo.tasks.errors import TaskDataError
from agzo.tasks.metrics import accuracy, exact_match, f1_binary, macro_f1, task_metric
from agzo.tasks.registry import Task, available_tasks, default_sizes, get_task, load_splits
from agzo.tasks.sampling import SplitSizes, TaskSplits

__all__ = [
    "CustomTask",
    "Example",
    "SplitSizes",
    "Task",
    "TaskDataError",
    "TaskSplits",
    "accuracy",
    "available_tasks",
    "custom_task_from_spec",
    "default_sizes",
    "exact_match",
    "f1_binary",
    "get_task",
    "load_splits",
    "macro_f1",
    "task_metric",
]
