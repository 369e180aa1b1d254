"""Optional loading of benchmark data from the Hugging Face hub.

Used only when a benchmark task is asked for without a data directory. `datasets` is an
optional dependency (`agzo[hub]`), imported lazily here so that nothing else in the
package needs it; when it is missing, or the hub cannot be reached, the error tells the
user to pass a local folder in the original format instead.

The hub copies differ from the original files in shape (integer labels, WSC spans at
the top level, MultiRC flattened to one row per answer), so rows are converted back to
the original SuperGLUE/GLUE record shape and the same templates serve both sources.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from typing import Any

from agzo.tasks.errors import TaskDataError
from agzo.tasks.records import Record

# Script-free copies of the canonical hub data sets, tried in order after the original id.
HUB_MIRRORS: dict[str, tuple[str, ...]] = {
    "glue": ("nyu-mll/glue",),
    "super_glue": ("aps/super_glue",),
}


def load_hub_records(
    task_name: str, hub_id: tuple[str, str], local_hint: str
) -> tuple[list[Record], list[Record]]:
    """(train records, validation records) for `hub_id` = (dataset path, config).

    `local_hint` describes the expected local files, for the error message.
    """
    advice = (
        f"pass --data-dir (data_dir=...) pointing at a folder in the original format ({local_hint})"
    )
    try:
        datasets: Any = importlib.import_module("datasets")
    except ImportError:
        raise TaskDataError(
            f"{task_name}: no data directory was given and the optional 'datasets' package "
            f"is not installed to fetch {hub_id[0]}/{hub_id[1]} from the hub; {advice}, "
            "or install agzo[hub]"
        ) from None
    # The canonical ids were loading scripts, which recent `datasets` releases refuse; the
    # same data is mirrored as plain files under the owners' namespaces, so try those next.
    failures: list[str] = []
    for path in (hub_id[0], *HUB_MIRRORS.get(hub_id[0], ())):
        try:
            dataset = datasets.load_dataset(path, hub_id[1])
            splits = {name: dataset[name] for name in ("train", "validation")}
        except Exception as exc:  # network, auth, script or schema problems: try the next
            failures.append(f"{path}/{hub_id[1]}: {type(exc).__name__}: {exc}")
            continue
        source = f"hub:{path}/{hub_id[1]}"
        return (
            to_records(task_name, splits["train"], f"{source} (train)"),
            to_records(task_name, splits["validation"], f"{source} (validation)"),
        )
    raise TaskDataError(
        f"{task_name}: could not load the data from the Hugging Face hub "
        f"({'; '.join(failures)}); {advice}"
    )


def to_records(task_name: str, rows: Iterable[Mapping[str, Any]], source: str) -> list[Record]:
    """Hub rows as Records in the original file shape (line = 1-based row number)."""
    items = [dict(row) for row in rows]
    if task_name == "multirc":
        items = regroup_multirc(items)
    elif task_name == "wsc":
        items = [nest_wsc_target(item) for item in items]
    return [Record(item, source, i) for i, item in enumerate(items, start=1)]


def nest_wsc_target(row: dict[str, Any]) -> dict[str, Any]:
    """The hub puts WSC's span fields at the top level; the original nests them."""
    if "target" in row:
        return row
    span_keys = ("span1_index", "span2_index", "span1_text", "span2_text")
    target = {key: row[key] for key in span_keys if key in row}
    rest = {key: value for key, value in row.items() if key not in span_keys}
    return {**rest, "target": target}


def regroup_multirc(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rebuild nested passages from the hub's one-row-per-answer MultiRC layout:
    {paragraph, question, answer, idx: {paragraph, question, answer}, label}."""
    passages: dict[Any, dict[str, Any]] = {}
    questions: dict[tuple[Any, Any], dict[str, Any]] = {}
    for row in rows:
        ids = row.get("idx") or {}
        p_id, q_id = ids.get("paragraph"), ids.get("question")
        passage = passages.get(p_id)
        if passage is None:
            passage = {"idx": p_id, "passage": {"text": row.get("paragraph", ""), "questions": []}}
            passages[p_id] = passage
        question = questions.get((p_id, q_id))
        if question is None:
            question = {"question": row.get("question", ""), "idx": q_id, "answers": []}
            questions[(p_id, q_id)] = question
            passage["passage"]["questions"].append(question)
        question["answers"].append(
            {"text": row.get("answer", ""), "idx": ids.get("answer"), "label": row.get("label")}
        )
    return list(passages.values())
