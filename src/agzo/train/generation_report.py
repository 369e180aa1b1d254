"""What a person reads after a generative evaluation: the generations themselves.

`generations.jsonl` holds one line per example (prompt, gold answers, the model's answer,
its F1 and exact match); the report printed at the end shows a few of them beside their
gold answers, with the share of empty answers, the usual symptom of a model that stops
at once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agzo.tasks.answer_metrics import exact_match_score, f1_score
from agzo.tasks.base import GenerativeExample
from agzo.train.evaluate_generation import Generations

__all__ = ["GenerationReport", "generation_report", "write_generations"]

# Examples shown in the printed report; generations.jsonl holds all of them.
SHOWN = 5


@dataclass(frozen=True)
class GenerationReport:
    """F1 / exact match of one split, the share of empty answers, and a few examples."""

    f1: float
    exact_match: float
    empty_answers: float
    n_examples: int
    samples: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        lines = [f"{'gold':<30}  {'generated':<30}  f1"]
        for sample in self.samples:
            gold = _short(sample["gold"][0])
            lines.append(f"{gold:<30}  {_short(sample['generated']):<30}  {sample['f1']:.2f}")
        return "\n".join(lines)

    def baseline_line(self) -> str:
        line = (
            f"f1 {self.f1:.4f}, exact match {self.exact_match:.4f} over {self.n_examples} "
            f"examples; {100 * self.empty_answers:.0f}% empty answers"
        )
        if self.empty_answers > 0.5:
            line += ": the model mostly stops at once (ends its answer before any word)"
        return line


def _rows(examples: Sequence[GenerativeExample], generations: Generations) -> list[dict[str, Any]]:
    return [
        {
            "gold": list(example.answers),
            "generated": text,
            "f1": round(f1_score(text, example.answers), 4),
            "em": exact_match_score(text, example.answers),
        }
        for example, text in zip(examples, generations.texts)
    ]


def generation_report(
    examples: Sequence[GenerativeExample], generations: Generations
) -> GenerationReport:
    rows = _rows(examples, generations)
    n = len(rows)
    return GenerationReport(
        f1=sum(r["f1"] for r in rows) / n,
        exact_match=sum(r["em"] for r in rows) / n,
        empty_answers=sum(not r["generated"] for r in rows) / n,
        n_examples=n,
        samples=rows[:SHOWN],
    )


def write_generations(
    path: Path, examples: Sequence[GenerativeExample], generations: Generations, split: str
) -> None:
    """One JSON line per example: prompt, gold answers, the generated answer and its scores."""
    staging = path.with_name(f".{path.name}.tmp")
    with staging.open("w", encoding="utf-8") as handle:
        for i, (example, row) in enumerate(zip(examples, _rows(examples, generations))):
            record = {"split": split, "index": i, "prompt": example.prompt, **row}
            record["loss"] = round(generations.losses[i], 5)
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(staging, path)


def _short(text: str, width: int = 30) -> str:
    flat = " ".join(text.split()) or "(empty)"
    return flat if len(flat) <= width else flat[: width - 3] + "..."
