"""Packed rows against padded rows on a real task's training batches: tokens and time.

    python benchmarks/packing.py --task sst2 --data-dir ../shared/data/sst2
    python benchmarks/packing.py --task rte --data-dir ../shared/data/rte --batches 3

Draws training batches as `agzo train` does (seed 0, batch 16), lays each out both ways
(`agzo train --pack`, the default, and `--no-pack`) and prints, measured side by side in
one run (the two layouts alternate batch by batch): the tokens each computes, the
median time of one no-grad forward and of one AGZO step (the loss the task's papers
train with; with the language-model loss, the correct candidates alone, as training
runs it), and their ratios; also the largest difference between the two layouts' losses.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable

import torch

import agzo
from agzo.models import load_model
from agzo.tasks.registry import get_task, load_splits
from agzo.train.loop import sample_minibatch
from agzo.train.objective import CandidateScorer, EncodedBatch
from agzo.train.packing import packable

LAYOUTS = {"padded": False, "packed": True}


def seconds(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def agzo_step(optimizer: agzo.AGZO, scorer: CandidateScorer, batch: EncodedBatch) -> None:
    optimizer.step(lambda: scorer.loss(batch), attention_mask=batch.attention_mask)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads [torch's]")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tokenizer = load_model(args.model)
    loss_kind = getattr(get_task(args.task), "paper_loss", "lm")  # as `agzo train` chooses
    scorer = CandidateScorer(model, tokenizer, loss_kind=loss_kind, pack=True)
    if not packable(model):
        raise SystemExit(f"{args.model}: its architecture does not pack (agzo.train.packing)")
    train = load_splits(args.task, args.data_dir, seed=0).train
    optimizer = agzo.AGZO(model, lr=1e-12, eps=1e-3)  # a step's cost, not its progress
    tokens: dict[str, list[int]] = {name: [] for name in LAYOUTS}
    forward: dict[str, list[float]] = {name: [] for name in LAYOUTS}
    step: dict[str, list[float]] = {name: [] for name in LAYOUTS}
    gap = 0.0
    for index in range(1, args.batches + 1):
        examples = sample_minibatch(train, 0, index, args.batch)
        batches: dict[str, EncodedBatch] = {
            name: scorer.batch(examples, pack=pack, labels_only=loss_kind == "lm")
            for name, pack in LAYOUTS.items()
        }
        losses = {}
        for name, batch in batches.items():
            tokens[name].append(batch.input_ids.numel())
            with torch.no_grad():
                losses[name] = float(scorer.loss(batch))  # also a warm-up
                forward[name].append(seconds(functools.partial(scorer.loss, batch)))
            step[name].append(seconds(functools.partial(agzo_step, optimizer, scorer, batch)))
        gap = max(gap, abs(losses["packed"] - losses["padded"]))

    def median(values: dict[str, list[float]], name: str) -> float:
        return statistics.median(values[name])

    print(
        f"{args.model}, {args.task} ({loss_kind} loss), {args.batches} training batches of "
        f"{args.batch}, "
        f"{torch.get_num_threads()} thread(s)"
    )
    print("| layout | tokens per batch | forward | AGZO step |")
    print("|---|---|---|---|")
    for name in LAYOUTS:
        print(
            f"| {name} | {statistics.fmean(tokens[name]):.0f} | {median(forward, name):.3f} s "
            f"| {median(step, name):.3f} s |"
        )
    token_ratio = statistics.fmean(tokens["padded"]) / statistics.fmean(tokens["packed"])
    print(
        f"| padded / packed | {token_ratio:.2f}x "
        f"| {median(forward, 'padded') / median(forward, 'packed'):.2f}x "
        f"| {median(step, 'padded') / median(step, 'packed'):.2f}x |"
    )
    print(f"largest loss difference between the layouts: {gap:.2e}")


if __name__ == "__main__":
    main()
