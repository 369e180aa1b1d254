"""A study's reports: the Markdown tables (search, seeds, dev curves, steps to MeZO's dev
loss), the JSON that benchmarks/study_table.py reads, and the plot of each arm's curves."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agzo.train.config import paper_loss
from compare_runs import smoothed  # the sibling script: one smoothing for both reports
from study_search import Arm, ArmPlan, IclSpec, RunResult, RunSpec

if TYPE_CHECKING:
    from study_scheduler import Study


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


def flag_value(words: list[str], flag: str) -> str | None:
    """The value the last `flag VALUE` or `flag=VALUE` in `words` gives (argparse's rule)."""
    value = None
    for word, following in zip(words, [*words[1:], None], strict=True):
        if word == flag:
            value = following
        elif word.startswith(flag + "="):
            value = word.partition("=")[2]
    return value


def arm_loss(study: Study, label: str) -> str:
    """The loss an arm's runs train with, and measure their dev loss in: their --loss, else
    the task's (as `agzo train` resolves it). Known for runs restored without a config too."""
    words = [*study.arms[label].train_flags(), *study.args.train_args]
    return flag_value(words, "--loss") or paper_loss(study.args.task)


def reference_mezo_arm(arms: dict[str, Arm]) -> str | None:
    """The arm that is plain MeZO (no flags beyond the method), else the first MeZO arm:
    a variant such as `mezo-lm` is no reference while MeZO itself runs."""
    mezos = [arm for arm in arms.values() if arm.method == "mezo"]
    plain = [arm for arm in mezos if arm.train_flags() == ["--optimizer", "mezo"]]
    return (plain or mezos)[0].label if mezos else None


def best_step_text(result: RunResult) -> str:
    """ "300", or "300 (stopped at 500: diverged)" for a run `--stop-diverged` ended."""
    stopped = result.summary.get("stopped_early")
    best = str(result.summary["best_step"])
    return best if not stopped else f"{best} (stopped at {stopped['step']}: diverged)"


def first_step_reaching(result: RunResult, target_loss: float) -> int | None:
    for step, loss in zip(*result.curve("dev", "loss"), strict=True):
        if loss <= target_loss:
            return step
    return None


def chosen_runs(study: Study, plan: ArmPlan, label: str,
                results: dict[RunSpec, RunResult]) -> list[RunResult]:  # fmt: skip
    if plan.chosen is None:
        return []
    return [results[s] for seed in study.seeds
            if (s := RunSpec(label, plan.chosen, seed)) in results]  # fmt: skip


def search_rank(result: RunResult) -> tuple[tuple[float, float], float]:
    """How a search ranks its finished runs: the selection key, ties to the lower rate
    (`plan_arm`'s rule)."""
    return result.selection_key(), result.spec.lr


def leading_run(study: Study, plan: ArmPlan, label: str,
                results: dict[RunSpec, RunResult]) -> RunResult | None:  # fmt: skip
    """The first seed's run at the chosen rate, or while the search goes on, the best
    finished so far by the same key that will choose."""
    finished = [r for s, r in results.items() if s.arm == label and s.seed == study.seeds[0]]
    if plan.chosen is not None:
        finished = [r for r in finished if r.spec.lr == plan.chosen]
    return min(finished, key=search_rank, default=None)


def dev_curves(study: Study, plans: dict[str, ArmPlan],
               results: dict[RunSpec, RunResult]) -> list[str]:  # fmt: skip
    """Markdown: every evaluation of each arm's leading first-seed run, dev metric / dev
    loss side by side, so the arms' pace can be read step by step."""
    found = {label: run for label, plan in plans.items()
             if (run := leading_run(study, plan, label, results)) is not None}  # fmt: skip
    leaders = {label: run for label, run in found.items() if run.has_curves}
    unrecorded = [f"{label} {run.spec.lr:g}" for label, run in found.items()
                  if not run.has_curves]  # fmt: skip
    if not leaders:
        return [f"Dev curves not recorded (restored without curves): {', '.join(unrecorded)}."
                ] if unrecorded else []  # fmt: skip
    metric = next(iter(leaders.values())).metric
    by_step: dict[int, dict[str, str]] = {}
    for label, run in leaders.items():
        steps, values = run.curve("dev", metric)
        losses = dict(zip(*run.curve("dev", "loss"), strict=True))
        for step, value in zip(steps, values, strict=True):
            loss = losses.get(step, math.nan)
            by_step.setdefault(step, {})[label] = f"{value:.3f} / {loss:.3f}"
    searching = {label for label in leaders if plans[label].chosen is None}
    heads = [f"{label} {run.spec.lr:g}" + (" (searching)" if label in searching else "")
             for label, run in leaders.items()]  # fmt: skip
    lines = [
        f"Dev {metric} / dev loss along seed {study.seeds[0]}, each arm at its chosen rate "
        "(while searching: its best finished so far):",
        "",
        "| step | " + " | ".join(heads) + " |",
        "|---|" + "---|" * len(heads),
    ]
    for step in sorted(by_step):
        cells = [by_step[step].get(label, "") for label in leaders]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    if unrecorded:
        lines += ["", f"Not recorded (restored without curves): {', '.join(unrecorded)}."]
    return lines


def icl_metric(report: dict[str, Any], metric: str) -> float:
    """The test metric from `agzo eval --output`'s JSON."""
    return float(report["results"]["test"][metric])


def zero_shot_by_seed(results: dict[RunSpec, RunResult], metric: str) -> dict[int, float]:
    return {s.seed: float(r.summary["zero_shot"]["test"][metric]) for s, r in results.items()}


def study_json(study: Study, results: dict[RunSpec, RunResult], plans: dict[str, ArmPlan],
               icl: dict[IclSpec, dict[str, Any]]) -> dict[str, Any]:  # fmt: skip
    metric = next(iter(results.values())).metric
    arms = {}
    for label, plan in plans.items():
        runs = chosen_runs(study, plan, label, results)
        arms[label] = {
            "method": study.arms[label].method,
            "flags": list(study.arms[label].train_flags()),
            "rates": plan.rates,
            "chosen": plan.chosen,
            "at_edge": plan.at_edge,
            "tied": plan.tied,
            "test": {str(r.spec.seed): r.test_metric for r in runs},
            "dev": {str(r.spec.seed): r.dev_metric for r in runs},
        }
    return {
        "task": study.args.task,
        "model": study.args.model,
        "metric": metric,
        "steps": study.args.steps,
        "seeds": study.seeds,
        "command": study.args.command,
        "zero_shot": {str(k): v for k, v in sorted(zero_shot_by_seed(results, metric).items())},
        "icl": {str(s.seed): icl_metric(r, metric) for s, r in icl.items()},
        "icl_demonstrations": study.args.icl,
        "arms": arms,
        "runs": {s.name: {"arm": s.arm, "lr": s.lr, "seed": s.seed,
                          "dev": r.dev_metric, "dev_loss": r.dev_loss, "test": r.test_metric,
                          "best_step": r.summary["best_step"],
                          "seconds_per_step": r.summary["seconds_per_step"],
                          "median_step_seconds": r.median_step_seconds}
                 for s, r in sorted(results.items(), key=lambda x: x[0].name)},
    }  # fmt: skip


def report(study: Study, results: dict[RunSpec, RunResult], plans: dict[str, ArmPlan],
           icl: dict[IclSpec, dict[str, Any]]) -> str:  # fmt: skip
    args, seeds = study.args, study.seeds
    metric = next(iter(results.values())).metric
    zero_shot = zero_shot_by_seed(results, metric)
    lines = [
        f"task {args.task}, model {args.model}, {args.steps} steps, seeds {seeds}",
        "",
        f"Learning-rate search, seed {seeds[0]} (best-on-dev weights):",
        "",
        f"| arm | lr | dev {metric} | dev loss | test {metric} | best step | median s/step |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, plan in plans.items():
        for lr in plan.rates:
            spec = RunSpec(label, lr, seeds[0])
            result = results.get(spec)
            if result is None:
                status = "failed" if spec.name in study.failed else "not finished"
                lines.append(f"| {label} | {lr:g} | {status} | | | | |")
                continue
            mark = " **(chosen)**" if plan.chosen == lr else ""
            lines.append(
                f"| {label} | {lr:g}{mark} | {result.dev_metric:.3f} | {result.dev_loss:.3f} | "
                f"{result.test_metric:.3f} | {best_step_text(result)} | "
                f"{result.median_step_seconds:.2f} |"
            )
    if margins := choice_margins(study, plans, results):
        lines += ["", *margins]
    lines += [
        "",
        f"Every seed (test {metric}; the arms at their chosen rate, best-on-dev weights):",
        "",
        f"| arm | lr | test {metric} per seed | mean ± sd | dev {metric} mean |",
        "|---|---|---|---|---|",
        f"| zero-shot | | {', '.join(f'{zero_shot[s]:.3f}' for s in seeds if s in zero_shot)} "
        f"| {mean_std([zero_shot[s] for s in seeds if s in zero_shot])} | |",
    ]
    if icl:
        values = [icl_metric(r, metric) for r in icl.values()]
        lines.append(f"| in-context, k = {args.icl} | | {', '.join(f'{v:.3f}' for v in values)} "
                     f"| {mean_std(values)} | |")  # fmt: skip
    for label, plan in plans.items():
        if plan.tied:
            lines.append(f"| {label} | none: every rate tied on dev | | | |")
            continue
        if plan.chosen is None:
            lines.append(f"| {label} | searching | | | |")
            continue
        runs = chosen_runs(study, plan, label, results)
        tests = [r.test_metric for r in runs]
        edge = " (grid edge)" if plan.at_edge else ""
        lines.append(
            f"| {label} | {plan.chosen:g}{edge} | {', '.join(f'{t:.3f}' for t in tests)} | "
            f"{mean_std(tests)} | {mean_std([r.dev_metric for r in runs])} |"
        )
    if curves := dev_curves(study, plans, results):
        lines += ["", *curves]
    if steps := steps_to_mezo(study, plans, results):
        lines += ["", *steps]
    return "\n".join(lines)


def choice_margins(study: Study, plans: dict[str, ArmPlan],
                   results: dict[RunSpec, RunResult]) -> list[str]:  # fmt: skip
    """Markdown: by how much each chosen rate led the next best rate of its search on dev,
    in the measure that chose it (and in dev examples for accuracy). A lead of a few
    examples is inside the dev set's own noise: the protocol still chooses by it, and
    this says how much that choice rests on."""
    # Summaries written before runs recorded their dev size share it with the study's
    # newer ones (one task, one split): take the study's when its runs agree on one.
    dev_sizes = {r.summary["final"]["dev"].get("n_examples") for r in results.values()} - {None}
    study_dev_size = dev_sizes.pop() if len(dev_sizes) == 1 else None
    lines = []
    for label, plan in plans.items():
        searched = [results[s] for lr in plan.rates
                    if (s := RunSpec(label, lr, study.seeds[0])) in results]  # fmt: skip
        ranked = sorted(searched, key=search_rank)
        if plan.chosen is None or len(ranked) < 2 or ranked[0].spec.lr != plan.chosen:
            continue
        best, next_best = ranked[:2]
        lead = best.dev_metric - next_best.dev_metric
        if best.select == "dev-loss":
            text = f"dev loss {best.dev_loss:.3f} against {next_best.dev_loss:.3f}"
        elif lead == 0:
            text = (f"level on dev {best.metric}; the lower dev loss decided "
                    f"({best.dev_loss:.3f} against {next_best.dev_loss:.3f})")  # fmt: skip
        else:
            text = f"ahead by {lead:.3f} dev {best.metric}"
            n_dev = best.summary["final"]["dev"].get("n_examples", study_dev_size)
            if best.metric == "accuracy" and n_dev:
                text += f", {round(lead * n_dev)} of {int(n_dev)} examples"
        lines.append(f"- {label}: {plan.chosen:g} over {next_best.spec.lr:g}: {text}")
    if not lines:
        return []
    return [f"How far each chosen rate led the next best on dev (seed {study.seeds[0]}):",
            "", *lines]  # fmt: skip


def steps_to_mezo(study: Study, plans: dict[str, ArmPlan],
                  results: dict[RunSpec, RunResult]) -> list[str]:  # fmt: skip
    """Markdown: per seed, the first evaluation at which each arm's chosen run reached
    MeZO's final and its lowest dev loss. The final loss alone flatters whoever beats a run
    that rose at its last evaluation; its lowest loss is the second target. Arms trained on
    another loss than MeZO's are timed against the MeZO arm trained on theirs (`mezo-lm`
    for `agzo-lm`), once that arm has chosen its rate."""
    mezo = reference_mezo_arm(study.arms)
    if mezo is None or plans[mezo].chosen is None:
        return []
    untimed: set[str] = set()  # arms whose runs were restored without curves
    other_loss: dict[str, str] = {}  # arms whose dev loss is another loss than MeZO's
    timed = _timing_lines(study, plans, results, mezo, "MeZO's", untimed, other_loss)
    lines = ["Steps to reach MeZO's final and its lowest dev loss (same seed, dev evaluated "
             f"every {study.args.eval_every} steps):", "", *timed]  # fmt: skip
    if not timed:
        return [*lines, "- MeZO's dev curves are not kept (restored without curves)"]
    for loss in dict.fromkeys(other_loss.values()):
        same_loss = {label: arm for label, arm in study.arms.items()
                     if label in plans and arm_loss(study, label) == loss}  # fmt: skip
        reference = reference_mezo_arm(same_loss)
        if reference is None or plans[reference].chosen is None:
            continue
        name = f"{reference}'s"
        if timed := _timing_lines(study, plans, results, reference, name, untimed, {}):
            lines += ["", f"Steps to reach {name} final and its lowest dev loss, for the arms "
                      f"trained on the {loss} loss (same seed):", "", *timed]  # fmt: skip
            other_loss = {label: kind for label, kind in other_loss.items() if kind != loss}
    if untimed:
        labels = ", ".join(label for label in plans if label in untimed)
        lines += ["", f"Not timed (runs restored without curves): {labels}."]
    if other_loss:
        labels = ", ".join(f"{arm} ({other_loss[arm]})" for arm in plans if arm in other_loss)
        lines += ["", f"Not timed (their dev loss is another loss than MeZO's): {labels}."]
    return lines


def _timing_lines(study: Study, plans: dict[str, ArmPlan], results: dict[RunSpec, RunResult],
                  reference: str, name: str, untimed: set[str],
                  other_loss: dict[str, str]) -> list[str]:  # fmt: skip
    """One line per seed and target (the reference arm's final and lowest dev loss): the
    step at which each arm trained on the reference's loss first reached it. Arms without
    curves go to `untimed`, arms on another loss to `other_loss`."""
    lines = []
    reference_loss = arm_loss(study, reference)
    for seed in study.seeds:
        found = results.get(RunSpec(reference, plans[reference].chosen or math.nan, seed))
        targets = None if found is None else found.last_and_lowest_dev_loss()
        if targets is None:
            continue
        for kind, target in zip(("final", "lowest"), targets, strict=True):
            reached = []
            for label, plan in plans.items():
                result = results.get(RunSpec(label, plan.chosen or math.nan, seed))
                if result is None:
                    continue
                if not result.has_curves:
                    untimed.add(label)
                    continue
                if (loss := arm_loss(study, label)) != reference_loss:
                    # A language-model loss and the candidates' softmax loss are on
                    # different scales: reaching one's value says nothing of the other.
                    other_loss[label] = loss
                    continue
                step = first_step_reaching(result, target)
                reached.append(f"{label} {'never' if step is None else step}")
            lines.append(f"- seed {seed}, {name} {kind} dev loss {target:.3f}: "
                         + (", ".join(reached) or "no arm's curve is kept"))  # fmt: skip
    return lines


def legend_labels(curves: dict[str, tuple[float | None, int, str]]) -> dict[str, str]:
    """A legend label per arm shown (its rate, how many seeds, its loss), such as "agzo lr
    3e-05 (3 seeds)". Arms trained on different losses share the training-loss axis, so
    then each label names its loss."""
    name_loss = len({loss for _, _, loss in curves.values()}) > 1
    labels = {}
    for label, (lr, n_seeds, loss) in curves.items():
        seeds = f"{n_seeds} seed{'s' if n_seeds > 1 else ''}"
        labels[label] = f"{label} lr {lr:g} ({seeds}{f'; {loss} loss' if name_loss else ''})"
    return labels


def plot(study: Study, plans: dict[str, ArmPlan], results: dict[RunSpec, RunResult],
         path: Path, window: int = 25) -> None:  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    metric = "accuracy"
    shown = {label: [r for r in chosen_runs(study, plan, label, results) if r.has_curves]
             for label, plan in plans.items()}  # fmt: skip
    shown = {label: runs for label, runs in shown.items() if runs}
    labels = legend_labels(
        {
            label: (plans[label].chosen, len(runs), arm_loss(study, label))
            for label, runs in shown.items()
        }
    )
    for label, runs in shown.items():
        metric = runs[0].metric
        label_text = labels[label]
        steps, _ = runs[0].curve("train", "loss")
        losses = [smoothed(r.curve("train", "loss")[1], window) for r in runs]
        n = min(len(x) for x in losses)
        top.plot(steps[:n], [statistics.fmean(x[i] for x in losses) for i in range(n)],
                 label=label_text)  # fmt: skip
        dev_steps, _ = runs[0].curve("dev", metric)
        devs = [r.curve("dev", metric)[1] for r in runs]
        m = min(len(x) for x in devs)
        mean = [statistics.fmean(x[i] for x in devs) for i in range(m)]
        (line,) = bottom.plot(dev_steps[:m], mean, marker="o", label=label_text)
        low = [min(x[i] for x in devs) for i in range(m)]
        high = [max(x[i] for x in devs) for i in range(m)]
        bottom.fill_between(dev_steps[:m], low, high, color=line.get_color(), alpha=0.15)
    top.set_ylabel(f"training loss (mean of last {window})")
    bottom.set_ylabel(f"dev {metric} (mean; band: min-max)")
    bottom.set_xlabel("step (0 = zero-shot)")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
