"""How far the dev loss falls by moving the label prior alone, against what training reached.

    python benchmarks/prior_floor.py --task rte --data-dir ../shared/data/rte --seeds 0,1,2 \\
        --study docs/results/study-rte --out docs/results/prior-floor-rte

The candidates loss is the cross-entropy of a softmax over the label words' scores. Adding
one constant per label word to every example's scores (a shift of the prior, as a bias
towards " Yes" would be) changes that loss but not which examples rank above which. This
script scores each seed's dev and test splits with the untrained model, fits the shift
that minimizes the dev loss (convex; at its optimum the mean predicted probability of each
label word equals its share of the dev labels), and reports:

- the floor: the dev loss with that shift, below which a model has to rank examples
  better, not just move its prior;
- the dev and test accuracy with the dev-fitted shift (calibration, for free);
- with --study, each of that seed's finished runs on the candidates loss: its lowest dev
  loss beside the floor, its first evaluation at or below it, its best dev accuracy. A
  run whose dev loss falls no lower than the floor has learned nothing the shift does not
  give.

Scores are journaled in --out (seed<S>-<split>.jsonl), so a cut-off run continues and the
figures can be recomputed from the files; the summary goes to --out/floor.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from agzo.tasks.base import Example
from agzo.train.config import TrainConfig
from agzo.train.eval_journal import EvalJournal, examples_digest
from agzo.train.evaluate import predict
from agzo.train.setup import Printer, load_run

sys.path.insert(0, str(Path(__file__).resolve().parent))

from study_record import Record  # noqa: E402


def candidates_loss(
    scores: torch.Tensor, labels: torch.Tensor, shift: torch.Tensor
) -> torch.Tensor:
    """The mean cross-entropy of a softmax over each example's shifted candidate scores."""
    return torch.nn.functional.cross_entropy(scores + shift, labels)


def fit_shift(scores: Sequence[Sequence[float]], labels: Sequence[int]) -> list[float]:
    """The per-candidate shift (the first candidate's held at 0) that minimizes the
    candidates loss on these examples."""
    table = torch.tensor(scores, dtype=torch.float64)
    target = torch.tensor(labels)
    missing = sorted(set(range(table.shape[1])) - set(labels))
    if missing:
        # The loss then falls without end as those candidates' shifts go to minus infinity.
        raise ValueError(f"candidates {missing} are never the label: no finite shift is best")
    free = torch.zeros(table.shape[1] - 1, dtype=torch.float64, requires_grad=True)
    solver = torch.optim.LBFGS(
        [free], max_iter=200, tolerance_grad=1e-12, tolerance_change=0.0,
        line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure() -> torch.Tensor:
        solver.zero_grad()
        loss = candidates_loss(table, target, torch.cat([free.new_zeros(1), free]))
        loss.backward()
        return loss

    solver.step(closure)
    return [0.0, *free.detach().tolist()]


def split_figures(
    examples: Sequence[Example], scores: Sequence[Sequence[float]], shift: Sequence[float]
) -> dict[str, Any]:
    """Loss, accuracy and answer shares with the scores as they are and shifted."""
    table = torch.tensor(scores, dtype=torch.float64)
    labels = torch.tensor([e.label for e in examples])
    words = [c.strip() for c in examples[0].candidates]
    figures = {}
    for name, values in (("zero_shot", [0.0] * len(shift)), ("shifted", shift)):
        offset = torch.tensor(values, dtype=torch.float64)
        answers = (table + offset).argmax(dim=1)
        figures[name] = {
            "loss": candidates_loss(table, labels, offset).item(),
            "accuracy": (answers == labels).double().mean().item(),
            "answer_share": {w: (answers == i).double().mean().item() for i, w in enumerate(words)},
        }
    figures["label_share"] = {w: (labels == i).double().mean().item() for i, w in enumerate(words)}
    return figures


def study_runs(record: Path, seed: int, floor: float) -> dict[str, dict[str, Any]]:
    """Each finished run of `seed` in a study's record that trained the candidates loss:
    its lowest dev loss, the first step whose dev loss is at or below `floor` (None:
    never), its best dev accuracy and its test accuracy (from the weights best-on-dev
    kept)."""
    kept = Record(record)
    runs = {}
    for name in kept.run_names():
        if not name.endswith(f"-seed{seed}"):
            continue
        found = kept.read_run(name)
        if found is None:
            continue
        summary, rows = found
        if summary["config"].get("loss") != "candidates":
            continue  # trained another loss: its dev loss is not on this scale
        dev = [r for r in rows if r.get("split") == "dev" and "loss" in r]
        if not dev:
            continue  # restored without its curves
        runs[name] = {
            "lowest_dev_loss": min(float(r["loss"]) for r in dev),
            "step_at_floor": next((int(r["step"]) for r in dev if float(r["loss"]) <= floor), None),
            "best_dev_accuracy": max(float(r["accuracy"]) for r in dev),
            "test_accuracy": float(summary["final"]["test"]["accuracy"]),
        }
    return runs


def score_split(
    run: Any, examples: list[Example], config: TrainConfig, path: Path
) -> list[list[float]]:
    """Every candidate's score on `examples` with the untrained model, journaled at `path`."""
    identity = {"model": config.model, "task": config.task, "seed": config.seed,
                "loss": config.loss_kind, "examples": examples_digest(examples)}  # fmt: skip
    with EvalJournal(path, identity) as journal:
        predictions = predict(
            run.model, run.scorer, examples, config.eval_batch_size,
            progress=True, desc=path.stem, journal=journal,
        )  # fmt: skip
    # The floor is of the loss the runs train: the scorer's own must be what is fitted.
    recomputed = candidates_loss(
        torch.tensor(predictions.scores, dtype=torch.float64),
        torch.tensor([e.label for e in examples]),
        torch.zeros(len(examples[0].candidates), dtype=torch.float64),
    ).item()
    recorded = sum(predictions.losses) / len(examples)
    if abs(recomputed - recorded) > 1e-5:
        raise SystemExit(f"{path.stem}: the scorer's loss {recorded:.6f} is not the "
                         f"candidates loss of its scores {recomputed:.6f}")  # fmt: skip
    return predictions.scores


def seeds(text: str) -> list[int]:
    return [int(part) for part in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True)
    parser.add_argument("--data-dir", help="the task's folder")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--seeds", type=seeds, default=[0])
    parser.add_argument("--study", type=Path, help="a study's record, to set its runs beside")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"model": args.model, "task": args.task, "by_seed": {}}
    for seed in args.seeds:
        config = TrainConfig(
            model=args.model, task=args.task, data_dir=args.data_dir, seed=seed,
            loss="candidates", device="cpu",
        )  # fmt: skip
        run = load_run(config, Printer(quiet=False))
        dev, test = list(run.splits.dev), list(run.splits.test)
        dev_scores = score_split(run, dev, config, args.out / f"seed{seed}-dev.jsonl")
        test_scores = score_split(run, test, config, args.out / f"seed{seed}-test.jsonl")
        shift = fit_shift(dev_scores, [e.label for e in dev])
        row: dict[str, Any] = {
            "shift": dict(zip([c.strip() for c in dev[0].candidates], shift)),
            "dev": split_figures(dev, dev_scores, shift),
            "test": split_figures(test, test_scores, shift),
        }
        if args.study is not None:
            row["runs"] = study_runs(args.study, seed, row["dev"]["shifted"]["loss"])
        report["by_seed"][str(seed)] = row
        (args.out / "floor.json").write_text(json.dumps(report, indent=1) + "\n")
    print(table(report))


def table(report: dict[str, Any]) -> str:
    lines = ["| seed | dev loss: untrained → floor | dev accuracy: untrained → shifted "
             "| test accuracy: untrained → shifted | shift |", "|---|---|---|---|---|"]  # fmt: skip
    for seed, row in report["by_seed"].items():
        dev, test = row["dev"], row["test"]
        shift = ", ".join(f"{w} {v:+.3f}" for w, v in row["shift"].items())
        lines.append(
            f"| {seed} | {dev['zero_shot']['loss']:.3f} → {dev['shifted']['loss']:.3f} "
            f"| {dev['zero_shot']['accuracy']:.3f} → {dev['shifted']['accuracy']:.3f} "
            f"| {test['zero_shot']['accuracy']:.3f} → {test['shifted']['accuracy']:.3f} | {shift} |"
        )
    runs = [(seed, name, r) for seed, row in report["by_seed"].items()
            for name, r in row.get("runs", {}).items()]  # fmt: skip
    if runs:
        lines += ["", "| run | lowest dev loss | its floor | below the floor by | first step "
                  "at the floor | best dev accuracy | test accuracy |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for seed, name, r in runs:
            floor = report["by_seed"][seed]["dev"]["shifted"]["loss"]
            lines.append(
                f"| {name} | {r['lowest_dev_loss']:.3f} | {floor:.3f} "
                f"| {floor - r['lowest_dev_loss']:+.3f} | {_step(r['step_at_floor'])} "
                f"| {r['best_dev_accuracy']:.3f} "
                f"| {r['test_accuracy']:.3f} |"
            )
    return "\n".join(lines)


def _step(step: int | None) -> str:
    return "never" if step is None else str(step)


if __name__ == "__main__":
    main()
