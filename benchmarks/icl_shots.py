"""The in-context baseline as the number of demonstrations grows, and what its answers follow.

    python benchmarks/icl_shots.py --task sst2 --data-dir ../shared/data/sst2 \\
        --shots 0,1,2,4,8,16,32 --examples 200 --out docs/results/icl-shots-sst2

Scores the first --examples test examples of seed --seed's split with k demonstrations
before each, drawn exactly as `agzo eval --demonstrations k --seed S` draws them for the
whole split, so k = 32 repeats the study's in-context row on those examples. For each k it
reports accuracy and the share of each answer, and three diagnostics of where the answers
come from:

- follows last: how often the answer is the label of the demonstration shown last
  (recency), against how often that label is simply right;
- follows majority: how often the answer is the label most of the k demonstrations carry
  (examples whose demonstrations tie are left out);
- shift removed: the accuracy once each candidate's mean score over the examples is
  subtracted from its score. A bias that moves every example's scores by the same amount
  (towards one label word) disappears under it, so a large gain says the demonstrations
  shift a prior rather than scramble the ranking. It reads no label.

With --flip-labels every demonstration shows a wrong answer (the next candidate: the
other label word of a binary task). A model that learns from the demonstrations' labels
then moves towards the wrong answers; one that reads them as context alone does not.

Each k's scores are journaled in --out (k<K>.jsonl, one row per example: prediction,
candidate scores, loss), so a cut-off run continues where it stopped and the figures can be
recomputed from the files; the summary goes to --out/shots.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agzo.tasks.base import Example
from agzo.tasks.demonstrations import demonstration_draws, with_demonstrations
from agzo.train.config import TrainConfig
from agzo.train.eval_journal import EvalJournal, examples_digest
from agzo.train.evaluate import predict
from agzo.train.setup import Printer, load_run


def shot_counts(text: str) -> list[int]:
    counts = [int(part) for part in text.split(",")]
    if any(k < 0 for k in counts):
        raise argparse.ArgumentTypeError(f"demonstration counts must be >= 0, got {text}")
    return counts


def flipped(example: Example) -> Example:
    """The example answered with the candidate after its correct one."""
    return dataclasses.replace(example, label=(example.label + 1) % len(example.candidates))


def summary(
    examples: Sequence[Example],
    predicted: Sequence[int],
    scores: Sequence[Sequence[float]],
    shown_labels: Sequence[Sequence[int]],
) -> dict[str, Any]:
    """Accuracy, answer shares and the diagnostics of the module doc for one k."""
    n = len(examples)
    labels = [e.label for e in examples]
    words = [c.strip() for c in examples[0].candidates]
    answers = Counter(predicted)
    result: dict[str, Any] = {
        "examples": n,
        "accuracy": sum(p == y for p, y in zip(predicted, labels)) / n,
        "answer_share": {w: answers[i] / n for i, w in enumerate(words)},
        "shift_removed_accuracy": _shift_removed_accuracy(scores, labels),
    }
    if shown_labels and shown_labels[0]:
        last = [shown[-1] for shown in shown_labels]
        result["follows_last"] = sum(p == s for p, s in zip(predicted, last)) / n
        result["last_is_right"] = sum(s == y for s, y in zip(last, labels)) / n
        majority = [_majority(shown) for shown in shown_labels]
        decided = [(p, m) for p, m in zip(predicted, majority) if m is not None]
        result["follows_majority"] = (
            sum(p == m for p, m in decided) / len(decided) if decided else None
        )
        shown = Counter(label for labels_shown in shown_labels for label in labels_shown)
        total = sum(shown.values())
        result["shown_share"] = {w: shown[i] / total for i, w in enumerate(words)}
    return result


def _majority(labels: Sequence[int]) -> int | None:
    """The label most of `labels` carry, or None when two tie for the most."""
    ranked = Counter(labels).most_common(2)
    if len(ranked) == 2 and ranked[0][1] == ranked[1][1]:
        return None
    return ranked[0][0]


def _shift_removed_accuracy(scores: Sequence[Sequence[float]], labels: Sequence[int]) -> float:
    means = [statistics.fmean(column) for column in zip(*scores)]
    shifted = [[s - m for s, m in zip(row, means)] for row in scores]
    right = sum(max(range(len(row)), key=row.__getitem__) == y for row, y in zip(shifted, labels))
    return right / len(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True)
    parser.add_argument("--data-dir", help="the task's folder (generated tasks need none)")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shots", type=shot_counts, default=[0, 1, 2, 4, 8, 16, 32])
    parser.add_argument("--examples", type=int, default=200, help="first N test examples")
    parser.add_argument("--flip-labels", action="store_true", help="demonstrations answer wrongly")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.examples < 1:
        parser.error(f"--examples must be >= 1, got {args.examples}")

    config = TrainConfig(
        model=args.model, task=args.task, data_dir=args.data_dir, seed=args.seed, device="cpu"
    )
    run = load_run(config, Printer(quiet=False))
    test, pool = list(run.splits.test), list(run.splits.train)
    if args.flip_labels:
        pool = [flipped(example) for example in pool]
    n = min(args.examples, len(test))
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "model": args.model, "task": args.task, "seed": args.seed, "test_examples": n,
        "test_split": len(test), "flip_labels": args.flip_labels, "by_shots": {},
    }  # fmt: skip
    for k in args.shots:
        # Example i's draw depends only on (seed, i): the first n get the whole split's.
        shown = with_demonstrations(test[:n], pool, k, args.seed) if k else test[:n]
        draws = demonstration_draws(n, len(pool), k, args.seed)
        identity = {"model": args.model, "task": args.task, "seed": args.seed, "shots": k,
                    "examples": examples_digest(shown)}  # fmt: skip
        started = time.perf_counter()
        with EvalJournal(args.out / f"k{k}.jsonl", identity) as journal:
            done = len(journal.rows)
            predictions = predict(
                run.model, run.scorer, shown, config.eval_batch_size,
                progress=True, desc=f"k={k}", journal=journal,
            )  # fmt: skip
        shown_labels = [[pool[i].label for i in draw] for draw in draws]
        row = summary(test[:n], predictions.predicted, predictions.scores, shown_labels)
        row["seconds"] = round(time.perf_counter() - started, 1)
        row["continued_from"] = done
        report["by_shots"][str(k)] = row
        (args.out / "shots.json").write_text(json.dumps(report, indent=1) + "\n")
        print(json.dumps({"shots": k, **row}), flush=True)
    print(table(report))


def table(report: dict[str, Any]) -> str:
    lines = ["| k | accuracy | answers | follows last (last is right) | follows majority "
             "| shift removed |", "|---|---|---|---|---|---|"]  # fmt: skip
    for k, row in report["by_shots"].items():
        answers = ", ".join(f"{w} {share:.2f}" for w, share in row["answer_share"].items())
        last = (f"{row['follows_last']:.3f} ({row['last_is_right']:.3f})"
                if "follows_last" in row else "")  # fmt: skip
        majority = row.get("follows_majority")
        lines.append(f"| {k} | {row['accuracy']:.3f} | {answers} | {last} | "
                     f"{'' if majority is None else f'{majority:.3f}'} | "
                     f"{row['shift_removed_accuracy']:.3f} |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
