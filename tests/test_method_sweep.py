"""The study runner (benchmarks/method_sweep.py and its study_* modules): grid widening,
resumption, the report."""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import signal
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import method_sweep  # noqa: E402
import study_clock  # noqa: E402
import study_report  # noqa: E402
import study_scheduler  # noqa: E402
import study_search  # noqa: E402
from study_search import FAILED, plan_arm  # noqa: E402


def keys_from_accuracy(accuracy: dict[float, float]) -> dict[float, tuple[float, float]]:
    return {lr: (-acc, 0.5) for lr, acc in accuracy.items()}


def test_an_interior_winner_is_chosen_without_widening() -> None:
    plan = plan_arm([1e-6, 1e-5, 1e-4], keys_from_accuracy({1e-6: 0.6, 1e-5: 0.8, 1e-4: 0.7}),
                    widen=10, max_widen=3)  # fmt: skip
    assert plan.chosen == 1e-5 and not plan.at_edge and plan.rates == [1e-6, 1e-5, 1e-4]


def test_a_winner_at_the_top_widens_upwards_until_it_is_interior() -> None:
    grid = [1e-6, 1e-5]
    first = plan_arm(grid, keys_from_accuracy({1e-6: 0.6, 1e-5: 0.7}), widen=10, max_widen=3)
    assert first.chosen is None and first.waiting_for == [1e-4]
    second = plan_arm(grid, keys_from_accuracy({1e-6: 0.6, 1e-5: 0.7, 1e-4: 0.65}),
                      widen=10, max_widen=3)  # fmt: skip
    assert second.chosen == 1e-5 and not second.at_edge and second.rates == [1e-6, 1e-5, 1e-4]


def test_a_winner_at_the_bottom_widens_downwards() -> None:
    plan = plan_arm([1e-5, 3e-5], keys_from_accuracy({1e-5: 0.8, 3e-5: 0.5}), widen=3,
                    max_widen=3)  # fmt: skip
    assert plan.waiting_for == [3.33e-6]  # rounded to three digits


def test_widening_stops_at_its_limit_and_says_the_winner_is_at_an_edge() -> None:
    accuracy = {1e-5: 0.5, 1e-4: 0.6, 1e-3: 0.7, 1e-2: 0.8}
    plan = plan_arm([1e-5, 1e-4], keys_from_accuracy(accuracy), widen=10, max_widen=2)
    assert plan.chosen == 1e-2 and plan.at_edge and plan.rates == [1e-5, 1e-4, 1e-3, 1e-2]


def test_a_diverged_or_failed_rate_beyond_the_winner_makes_it_interior() -> None:
    keys = keys_from_accuracy({1e-6: 0.6, 1e-5: 0.7})
    keys[1e-4] = FAILED
    plan = plan_arm([1e-6, 1e-5], keys, widen=10, max_widen=3)
    assert plan.chosen == 1e-5 and not plan.at_edge
    nothing = plan_arm([1e-6], {1e-6: FAILED}, widen=10, max_widen=3)
    assert nothing.chosen is None and nothing.waiting_for == []


def test_a_grid_whose_rates_all_tie_on_dev_chooses_none_and_widens_nowhere() -> None:
    """Every rate kept the zero-shot weights: dev gives no direction to widen in."""
    zero_shot = (-0.53, 0.799)
    tied = plan_arm([1e-5, 3e-5, 1e-4], dict.fromkeys([1e-5, 3e-5, 1e-4], zero_shot),
                    widen=3, max_widen=3)  # fmt: skip
    assert tied.tied and tied.chosen is None and tied.waiting_for == []
    assert tied.rates == [1e-5, 3e-5, 1e-4]
    # A tie among some rates only is an ordinary search: here the top rate wins and widens.
    keys = {1e-5: zero_shot, 3e-5: zero_shot, 1e-4: (-0.56, 0.70)}
    partial = plan_arm([1e-5, 3e-5, 1e-4], keys, widen=3, max_widen=3)
    assert not partial.tied and partial.waiting_for == [3e-4]
    # A grid of one rate is never tied: its rate is chosen, at the edge.
    single = plan_arm([1e-5], {1e-5: zero_shot}, widen=3, max_widen=3)
    assert single.chosen == 1e-5 and single.at_edge and not single.tied


def test_runs_that_keep_the_lowest_dev_loss_choose_their_rate_by_dev_loss() -> None:
    def result(accuracy: float, loss: float, select: str) -> study_search.RunResult:
        summary = {"metric": "accuracy", "config": {"select": select},
                   "final": {"dev": {"accuracy": accuracy, "loss": loss}}}  # fmt: skip
        return study_search.RunResult(study_search.RunSpec("mezo", 1e-6, 0), summary, [])

    for select, higher_accuracy_wins in (("dev-loss", False), ("dev-accuracy", True)):
        accurate, low_loss = result(0.8, 0.6, select), result(0.7, 0.5, select)
        wins = accurate.selection_key() < low_loss.selection_key()
        assert wins == higher_accuracy_wins, select
    assert result(math.nan, math.nan, "dev-accuracy").selection_key() == (math.inf, math.inf)


def test_the_reported_step_time_is_the_median_step_not_the_wall_time() -> None:
    """A run paused for minutes in one step (SIGSTOP) reports its ordinary step time."""
    steps = [{"split": "train", "step": i, "step_time": t} for i, t in enumerate([2.0, 3.0, 600.0])]
    evaluation = {"split": "dev", "step": 2, "accuracy": 0.5}
    result = study_search.RunResult(
        study_search.RunSpec("agzo", 1e-5, 0), {"seconds_per_step": 201.7}, [*steps, evaluation]
    )
    assert result.median_step_seconds == 3.0
    assert math.isnan(study_search.RunResult(result.spec, {}, []).median_step_seconds)


def test_a_run_stopped_as_diverged_says_where_beside_its_best_step() -> None:
    spec = study_search.RunSpec("lozo", 9e-5, 0)
    summary = {"best_step": 100, "stopped_early": {"step": 300, "reason": "dev loss 9"}}
    stopped = study_search.RunResult(spec, summary, [])
    assert study_report.best_step_text(stopped) == "100 (stopped at 300: diverged)"
    full = study_search.RunResult(spec, {"best_step": 100, "stopped_early": None}, [])
    assert study_report.best_step_text(full) == "100"


def test_the_reference_mezo_arm_is_plain_mezo_even_after_a_variant() -> None:
    arms = {
        "mezo-lm": study_search.Arm("mezo-lm", "mezo", ("--optimizer", "mezo", "--loss", "lm")),
        "agzo": study_search.Arm("agzo", "agzo", ()),
        "mezo": study_search.Arm("mezo", "mezo", ()),
    }
    assert study_report.reference_mezo_arm(arms) == "mezo"
    del arms["mezo"]
    assert study_report.reference_mezo_arm(arms) == "mezo-lm"
    assert study_report.reference_mezo_arm({"agzo": arms["agzo"]}) is None


def test_the_dev_curves_follow_each_arms_chosen_or_leading_first_seed_run() -> None:
    def run(arm: str, lr: float, seed: int, accuracies: list[float]) -> study_search.RunResult:
        records = [{"split": "dev", "step": 10 * i, "accuracy": a, "loss": 1 - a}
                   for i, a in enumerate(accuracies)]  # fmt: skip
        best = max(accuracies)
        summary = {"metric": "accuracy", "final": {"dev": {"accuracy": best, "loss": 1 - best}}}
        return study_search.RunResult(study_search.RunSpec(arm, lr, seed), summary, records)

    runs = [run("agzo", 1e-5, 0, [0.5, 0.6]), run("agzo", 3e-5, 0, [0.5, 0.7]),
            run("agzo", 3e-5, 1, [0.5, 0.9]),  # another seed: never the curve shown
            run("mezo", 1e-5, 0, [0.5, 0.8]), run("mezo", 3e-5, 0, [0.5, 0.55])]  # fmt: skip
    results = {r.spec: r for r in runs}
    study = study_scheduler.Study(argparse.Namespace(), {}, {}, [0, 1])
    plans = {  # MeZO's search has chosen its lower rate; AGZO's goes on
        "agzo": study_search.ArmPlan([1e-5, 3e-5, 1e-4], [1e-4], None, False),
        "mezo": study_search.ArmPlan([3e-6, 1e-5, 3e-5], [], 1e-5, False),
        "lozo": study_search.ArmPlan([1e-5], [1e-5], None, False),  # nothing finished
    }
    lines = study_report.dev_curves(study, plans, results)
    assert lines[2] == "| step | agzo 3e-05 (searching) | mezo 1e-05 |"
    assert lines[4:] == ["| 0 | 0.500 / 0.500 | 0.500 / 0.500 |",
                         "| 10 | 0.700 / 0.300 | 0.800 / 0.200 |"]  # fmt: skip
    assert study_report.dev_curves(study, {"lozo": plans["lozo"]}, results) == []


def test_the_report_says_by_how_many_dev_examples_each_chosen_rate_led() -> None:
    def run(
        arm: str, lr: float, accuracy: float, loss: float,
        n_dev: int | None = None, select: str = "dev-accuracy",
    ) -> study_search.RunResult:  # fmt: skip
        dev: dict[str, float] = {"accuracy": accuracy, "loss": loss}
        if n_dev is not None:
            dev["n_examples"] = n_dev
        summary = {"metric": "accuracy", "final": {"dev": dev}, "config": {"select": select}}
        return study_search.RunResult(study_search.RunSpec(arm, lr, 0), summary, [])

    runs = [
        run("agzo", 1e-5, 0.780, 0.50), run("agzo", 3e-5, 0.792, 0.45, n_dev=500),
        run("agzo", 1e-4, 0.700, 0.60),
        run("mezo", 1e-5, 0.800, 0.52), run("mezo", 3e-5, 0.800, 0.48),  # level: loss decides
        run("lozo", 1e-5, 0.75, 0.40, select="dev-loss"),
        run("lozo", 3e-5, 0.79, 0.42, select="dev-loss"),
        run("zo-act", 1e-3, 0.81, 0.40),  # a search of one rate: nothing to lead
    ]  # fmt: skip
    results = {r.spec: r for r in runs}
    plans = {
        "agzo": study_search.ArmPlan([1e-5, 3e-5, 1e-4], [], 3e-5, False),
        "mezo": study_search.ArmPlan([1e-5, 3e-5], [], 3e-5, True),
        "lozo": study_search.ArmPlan([1e-5, 3e-5], [], 1e-5, True),
        "zo-act": study_search.ArmPlan([1e-3], [], 1e-3, True),
        "fo-adamw": study_search.ArmPlan([1e-5, 3e-5], [3e-5], None, False),  # searching
    }
    study = study_scheduler.Study(argparse.Namespace(), {}, {}, [0, 1])
    lines = study_report.choice_margins(study, plans, results)
    assert lines == [
        "How far each chosen rate led the next best on dev (seed 0):",
        "",
        # Runs that do not record their dev size take the one the study's runs agree on.
        "- agzo: 3e-05 over 1e-05: ahead by 0.012 dev accuracy, 6 of 500 examples",
        "- mezo: 3e-05 over 1e-05: level on dev accuracy; the lower dev loss decided "
        "(0.480 against 0.520)",
        "- lozo: 1e-05 over 3e-05: dev loss 0.400 against 0.420",
    ]
    # Runs that disagree on the dev size: a run without its own is given none.
    runs[0] = run("agzo", 1e-5, 0.780, 0.50, n_dev=500)
    runs[1] = run("agzo", 3e-5, 0.792, 0.45)
    runs.append(run("zo-act", 3e-4, 0.7, 0.5, n_dev=200))
    results = {r.spec: r for r in runs}
    assert study_report.choice_margins(study, plans, results)[2] == (
        "- agzo: 3e-05 over 1e-05: ahead by 0.012 dev accuracy"
    )


def test_middle_out_order_and_run_names_round_trip() -> None:
    assert study_scheduler._middle_out([1.0, 2.0, 3.0, 4.0, 5.0]) == [3.0, 2.0, 4.0, 1.0, 5.0]
    spec = study_search.RunSpec("agzo-paper", 3e-6, 2)
    assert study_scheduler._spec_from_name("agzo-paper", spec.name) == spec
    assert study_scheduler._spec_from_name("agzo", spec.name) is None


def test_first_arms_finish_their_study_before_the_others_start(tmp_path: Path) -> None:
    args = argparse.Namespace(widen=3.0, max_widen=1, icl=0, out=tmp_path,
                                           first=["mezo"])  # fmt: skip
    arms = {}
    grid = study_search.parse_grid(["agzo=1e-5,3e-5,1e-4", "mezo=1e-6,3e-6"], arms)
    study = study_scheduler.Study(args, arms, grid, [0, 1])
    names = [spec.name for spec in study.wanted({})]
    assert names[:2] == ["mezo-lr1e-06-seed0", "mezo-lr3e-06-seed0"]
    assert names[2:] == ["agzo-lr3e-05-seed0", "agzo-lr1e-05-seed0", "agzo-lr0.0001-seed0"]
    args.first = []
    turns = [spec.name for spec in study.wanted({})]
    assert turns[:3] == ["agzo-lr3e-05-seed0", "mezo-lr1e-06-seed0", "agzo-lr1e-05-seed0"]


def test_the_in_context_baseline_comes_last_unless_named_first(tmp_path: Path) -> None:
    args = argparse.Namespace(widen=3.0, max_widen=1, icl=4, out=tmp_path, first=["mezo"])
    grid = study_search.parse_grid(["agzo=1e-5,3e-5", "mezo=1e-6,3e-6"], {})
    study = study_scheduler.Study(args, {}, grid, [0, 1])
    names = [spec.name for spec in study.wanted({})]
    assert names[-2:] == ["icl-k4-seed0", "icl-k4-seed1"]
    args.first = ["mezo", "icl"]  # takes its turns with MeZO, before AGZO
    names = [spec.name for spec in study.wanted({})]
    assert names == ["mezo-lr1e-06-seed0", "icl-k4-seed0", "mezo-lr3e-06-seed0",
                     "icl-k4-seed1", "agzo-lr1e-05-seed0", "agzo-lr3e-05-seed0"]  # fmt: skip
    (tmp_path / "icl-k4-seed0.json").write_text('{"results": {}}')  # one seed is done
    assert "icl-k4-seed0" not in [spec.name for spec in study.wanted({})]


def test_an_in_context_evaluation_under_way_is_said_to_continue_from_its_journal(
    tmp_path: Path,
) -> None:
    """Its journal is where the evaluation writes: the record's folder when there is one."""
    args = argparse.Namespace(widen=3.0, max_widen=1, icl=4, out=tmp_path / "out", first=[])
    grid = study_search.parse_grid(["agzo=1e-5"], {})
    record = study_scheduler.Record(tmp_path / "record")
    spec = study_search.IclSpec(4, 0)
    for kept in (record, None):
        study = study_scheduler.Study(args, {}, grid, [0], kept)
        output = study.icl_output(spec)
        assert output.parent == (record.runs if kept else args.out)
        assert study._resuming(spec) == ""
        journal = study_scheduler.journal_path(output, "test")
        journal.parent.mkdir(parents=True, exist_ok=True)
        journal.write_text("{}\n")
        assert study._resuming(spec) == " (continuing from the batches it has scored)"


def test_continue_needs_a_recorded_command(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="command.json not found"):
        method_sweep.main(["--continue", str(tmp_path)])
    with pytest.raises(SystemExit, match="usage"):
        method_sweep.main(["--continue"])


def test_continue_may_change_how_runs_share_the_machine_only(tmp_path: Path) -> None:
    recorded = ["--task", "sst2", "--grid", "agzo=1e-5", "--jobs", "2", "--threads=1",
                "--out", str(tmp_path), "--", "--device", "cpu", "--jobs", "9"]  # fmt: skip
    (tmp_path / method_sweep.COMMAND_FILE).write_text(json.dumps({"argv": recorded}))
    assert method_sweep.continued_command([str(tmp_path)]) == recorded
    again = method_sweep.continued_command([str(tmp_path), "--jobs", "1", "--threads", "1"])
    assert again == ["--task", "sst2", "--grid", "agzo=1e-5", "--out", str(tmp_path),
                     "--jobs", "1", "--threads", "1",
                     "--", "--device", "cpu", "--jobs", "9"]  # fmt: skip
    with pytest.raises(SystemExit, match=r"usage: .*--jobs N"):
        method_sweep.continued_command([str(tmp_path), "--steps", "10"])


def test_until_reads_a_time_left_or_the_next_clock_time() -> None:
    now = datetime(2026, 3, 1, 21, 30, 15)
    assert study_clock.parse_until("2h30m", now) == now + timedelta(hours=2, minutes=30)
    assert study_clock.parse_until("90m", now) == now + timedelta(minutes=90)
    assert study_clock.parse_until("45s", now) == now + timedelta(seconds=45)
    assert study_clock.parse_until("22:10", now) == datetime(2026, 3, 1, 22, 10)
    assert study_clock.parse_until("7:05", now) == datetime(2026, 3, 2, 7, 5)  # tomorrow's
    for bad in ("", "soon", "2h30", "24:00", "22:75", "-5m"):
        with pytest.raises(SystemExit, match=f"--until {bad}: "):
            study_clock.parse_until(bad, now)


def test_a_runs_length_is_the_longest_finished_run_of_its_arm() -> None:
    """Measured wall times first; else the run's training time with the evaluations'
    allowance; the study's median run when its arm has none; nothing to go by, None."""

    def result(spec: study_search.RunSpec, train_seconds: float) -> study_search.RunResult:
        return study_search.RunResult(spec, {"train_seconds": train_seconds}, [])

    agzo = [study_search.RunSpec("agzo", 1e-5, seed) for seed in (0, 1)]
    mezo = study_search.RunSpec("mezo", 1e-5, 0)
    results = {agzo[0]: result(agzo[0], 100.0), agzo[1]: result(agzo[1], 40.0),
               mezo: result(mezo, 300.0)}  # fmt: skip
    wanted = study_search.RunSpec("agzo", 3e-5, 2)
    allowance = study_clock.EVALUATION_ALLOWANCE
    assert study_clock.expected_seconds(wanted, results, {}) == 100.0 * allowance
    durations = {agzo[0].name: 110.0, agzo[1].name: 150.0}  # a diverged run may be short
    assert study_clock.expected_seconds(wanted, results, durations) == 150.0
    lozo = study_search.RunSpec("lozo", 1e-5, 0)
    # 110, 150 and 300 * allowance: the median, not the slow arm's run.
    assert study_clock.expected_seconds(lozo, results, durations) == 150.0
    assert study_clock.expected_seconds(lozo, {}, durations) is None


def test_bad_arms_and_grids_exit_with_one_line() -> None:
    with pytest.raises(SystemExit, match="unknown"):
        study_search.parse_grid(["nosuch=1e-5"], {})
    with pytest.raises(SystemExit, match="sets --lr"):
        study_search.parse_arms(["x=--optimizer agzo --lr 1e-3"])
    with pytest.raises(SystemExit, match="no --grid"):
        study_search.parse_grid(["mezo=1e-6"], study_search.parse_arms(["p=--optimizer agzo"]))
    with pytest.raises(SystemExit, match="positive"):
        study_search.parse_grid(["mezo=0"], {})
    with pytest.raises(SystemExit, match="names the in-context baseline"):
        study_search.parse_arms(["icl=--optimizer agzo"])


def test_first_names_arms_or_the_in_context_baseline(tmp_path: Path) -> None:
    base = ["--task", "sst2", "--grid", "agzo=1e-5", "--out", str(tmp_path), "--report-only"]
    with pytest.raises(SystemExit, match="needs --icl K"):
        method_sweep.main([*base, "--first", "agzo,icl"])
    with pytest.raises(SystemExit, match="--first lozo: no such arm"):
        method_sweep.main([*base, "--first", "icl,lozo", "--icl", "4"])
    with pytest.raises(SystemExit, match="no run finished"):  # accepted: nothing to report
        method_sweep.main([*base, "--first", "agzo,icl", "--icl", "4"])


def tiny_study(model_dir: Path, tmp_path: Path, *flags: str) -> tuple[list[str], Path]:
    """The runner's arguments for 4-step runs of a tiny model on 40 generated reviews."""
    data = tmp_path / "reviews.jsonl"
    rows = [{"text": f"review {i}: it was {('bad', 'good')[i % 2]}", "label": i % 2}
            for i in range(40)]  # fmt: skip
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "study"
    argv = [
        "--task", "custom", "--model", str(model_dir), "--steps", "4", "--eval-every", "2",
        "--checkpoint-every", "2", "--threads", "1", *flags, "--out", str(out), "--",
        "--data-file", str(data), "--template", "{text}. Overall it was",
        "--labels", "0=bad,1=good", "--batch-size", "4", "--n-train", "24", "--n-dev", "8",
        "--n-test", "8",
    ]  # fmt: skip
    return argv, out


def commands_run(log: Path) -> list[str]:
    """The `agzo` commands a run's log records, one per launch."""
    return [line for line in log.read_text().splitlines() if line.startswith("$ ")]


def test_a_study_widens_chooses_and_repeats(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two arms on a tiny model, one a registered method, one a variant; then the same
    command again runs nothing more."""
    argv, out = tiny_study(
        model_dir, tmp_path, "--seeds", "0,1", "--jobs", "2", "--max-widen", "1",
        "--arm", "agzo-r2=--optimizer agzo --rank 2", "--grid", "agzo-r2=1e-3",
        "--grid", "mezo=1e-4,1e-3",
    )  # fmt: skip
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    method_sweep.main(argv)
    # Called as a function, the runner leaves the caller's signal handlers as it found them.
    assert {signum: signal.getsignal(signum) for signum in handlers} == handlers
    # Progress: at the start the two first-seed searches and nothing else are known; at
    # the end, the six runs the widened search and the seeds came to.
    printed = capsys.readouterr().out
    assert "; 0 runs finished, 0 under way, 3 more wanted now" in printed
    assert "  6 runs finished, 0 under way, 0 more wanted now" in printed
    study = json.loads((out / "sweep.json").read_text())
    mezo = study["arms"]["mezo"]
    # A two-rate grid always has its winner at an edge: one widening on that side follows.
    assert len(mezo["rates"]) == 3 and mezo["chosen"] in mezo["rates"]
    assert set(mezo["test"]) == {"0", "1"} and set(study["arms"]["agzo-r2"]["test"]) == {"0", "1"}
    assert study["arms"]["agzo-r2"]["flags"][:2] == ["--optimizer", "agzo"]
    assert set(study["zero_shot"]) == {"0", "1"}
    [command] = commands_run(out / "logs" / "agzo-r2-lr0.001-seed0.txt")
    assert "--rank 2" in command and "--lr 0.001" in command and "--seed 0" in command
    assert "--overwrite" in command and "--resume" not in command
    assert not (out / "agzo-r2-lr0.001-seed0" / "checkpoints").exists()  # pruned when done
    assert "| zero-shot |" in (out / "sweep.md").read_text() and (out / "sweep.png").is_file()
    lines = (out / "sweep.md").read_text().splitlines()
    for seed in (0, 1):
        for kind in ("final", "lowest"):
            prefix = f"- seed {seed}, MeZO's {kind} dev loss "
            [line] = [line for line in lines if line.startswith(prefix)]
            assert "agzo-r2 " in line and "mezo never" not in line  # MeZO reaches its own

    # The same command again launches nothing: every run it wants has finished.
    launched = {log.name: len(commands_run(log)) for log in (out / "logs").iterdir()}
    method_sweep.main(argv)
    assert {log.name: len(commands_run(log)) for log in (out / "logs").iterdir()} == launched


def test_a_study_continues_from_its_record_when_its_run_folder_is_gone(
    model_dir: Path, tmp_path: Path
) -> None:
    """What a fresh checkout has of a study is its record: the finished runs are read from
    it, nothing is trained again, the report is the same; a run missing from it is trained."""
    import shutil

    record = tmp_path / "record"
    argv, out = tiny_study(model_dir, tmp_path, "--seeds", "0", "--grid", "agzo=1e-3",
                           "--icl", "2", "--record", str(record), "--eval-args",
                           f"--data-file {tmp_path / 'reviews.jsonl'} --labels 0=bad,1=good "
                           "--template '{text}. Overall it was' --n-train 24 --n-dev 8 "
                           "--n-test 8")  # fmt: skip
    method_sweep.main(argv)
    kept = record / "runs" / "agzo-lr0.001-seed0"
    assert sorted(p.name for p in kept.iterdir()) == ["metrics.jsonl.gz", "summary.json"]
    # The in-context evaluation writes into the record, where its journal can be committed.
    [icl_command] = commands_run(out / "logs" / "icl-k2-seed0.txt")
    words = shlex.split(icl_command[2:])
    output = words[words.index("--output") + 1]
    assert Path(output) == record / "runs" / "icl-k2-seed0.json"
    assert "results" in json.loads(Path(output).read_text())
    assert not (out / "icl-k2-seed0.json").exists()
    assert not list((record / "runs").glob("*.progress.jsonl"))  # removed once finished
    assert (record / "sweep.md").read_text() == (out / "sweep.md").read_text()
    before = json.loads((record / "sweep.json").read_text())
    cut = argv.index("--")
    method_sweep.main([*argv[:cut], "--report-only", *argv[cut:]])
    assert json.loads((record / "sweep.json").read_text()) == before  # the study's command

    shutil.rmtree(out)
    method_sweep.main(["--continue", str(record)])
    assert not (out / "logs").exists()  # nothing was launched
    assert json.loads((record / "sweep.json").read_text()) == before
    # Kept metrics are the run's own: the dev curve in the report is unchanged.
    assert "| 4 | " in (record / "sweep.md").read_text()
    assert "| in-context, k = 2 |" in (record / "sweep.md").read_text()

    # A rate the record lacks is trained and kept, in the same record.
    (record / "runs" / "agzo-lr0.001-seed0" / "summary.json").unlink()
    method_sweep.main(["--continue", str(record)])
    assert len(commands_run(out / "logs" / "agzo-lr0.001-seed0.txt")) == 1
    assert (kept / "summary.json").is_file()


def test_a_run_restored_without_curves_counts_as_finished_and_says_so(tmp_path: Path) -> None:
    """A run kept as its report's figures only (summary, no metrics) takes part in the
    search and the seed table; the lines that need its curve say it is not recorded."""
    from study_record import Record

    summaries = {
        ("mezo", 1e-5, 0): (0.80, 0.40), ("mezo", 1e-5, 1): (0.82, 0.38),
        ("agzo", 1e-5, 0): (0.81, 0.39), ("agzo", 1e-5, 1): (0.79, 0.41),
        ("lozo", 1e-5, 0): (0.70, 0.55), ("lozo", 3e-5, 0): (0.70, 0.55),  # zero-shot kept
    }  # fmt: skip
    record = Record(tmp_path / "record")
    for (arm, lr, seed), (dev, loss) in summaries.items():
        kept = record.runs / study_search.RunSpec(arm, lr, seed).name
        kept.mkdir(parents=True)
        summary = {"metric": "accuracy", "best_step": 10, "seconds_per_step": 2.0,
                   "median_step_seconds": 1.5, "zero_shot": {"test": {"accuracy": 0.7}},
                   "final": {"dev": {"accuracy": dev, "loss": loss},
                             "test": {"accuracy": dev - 0.01}}}  # fmt: skip
        (kept / "summary.json").write_text(json.dumps(summary))
    args = argparse.Namespace(widen=3.0, max_widen=0, icl=0, out=tmp_path / "out", first=[],
                              task="sst2", model="m", steps=10, eval_every=5,
                              command="x", train_args=[])  # fmt: skip
    args.out.mkdir()
    arms: dict[str, study_search.Arm] = {}
    grid = study_search.parse_grid(["agzo=1e-5", "mezo=1e-5", "lozo=1e-5,3e-5"], arms)
    study = study_scheduler.Study(args, arms, grid, [0, 1], record)
    results = study.results()
    assert len(results) == 6 and study.wanted(results) == []  # the tied arm wants no seeds
    text = study.write_report()
    assert text is not None
    assert "| agzo | 1e-05 (grid edge) | 0.800, 0.780 | 0.790 ± 0.014 |" in text
    assert "| 1.50 |" in text  # the restored median step time
    assert "- MeZO's dev curves are not kept (restored without curves)" in text
    assert "not recorded (restored without curves): agzo 1e-05, mezo 1e-05, lozo 1e-05." in text
    # Given MeZO's last and lowest dev loss, a restored run still sets the targets.
    (record.runs / "mezo-lr1e-05-seed1" / "summary.json").write_text(json.dumps(
        {**json.loads((record.runs / "mezo-lr1e-05-seed1" / "summary.json").read_text()),
         "dev_loss_last_and_lowest": [0.40, 0.38]}))  # fmt: skip
    # ... and a run whose curve was kept is timed against them.
    import gzip

    rows = [{"step": step, "split": "dev", "accuracy": 0.7, "loss": loss}
            for step, loss in ((0, 0.55), (5, 0.41), (10, 0.39))]  # fmt: skip
    with gzip.open(record.runs / "agzo-lr1e-05-seed1" / "metrics.jsonl.gz", "wt") as kept:
        kept.writelines(json.dumps(row) + "\n" for row in rows)
    study.finished.clear()
    text = study.write_report()
    assert text is not None
    assert "- seed 1, MeZO's final dev loss 0.400: agzo 10\n" in text
    assert "- seed 1, MeZO's lowest dev loss 0.380: agzo never\n" in text
    assert "Not timed (runs restored without curves): mezo." in text
    assert "| lozo | none: every rate tied on dev |" in text
    assert (record.root / "sweep.md").read_text() == text + "\n"


def test_an_arm_trained_on_another_loss_is_not_timed_against_mezos_dev_loss(
    tmp_path: Path,
) -> None:
    """A language-model dev loss (about 3 at zero-shot) and the candidates' softmax loss
    (about 0.5) are different scales: the report must not say the one never reached the
    other, but name the arm as not comparable."""
    import gzip

    from study_record import Record

    losses = {"mezo": [0.55, 0.45, 0.40], "agzo": [0.55, 0.42, 0.39], "agzo-lm": [3.2, 0.9, 0.6]}
    record = Record(tmp_path / "record")
    for arm, curve in losses.items():
        kept = record.runs / study_search.RunSpec(arm, 1e-5, 0).name
        kept.mkdir(parents=True)
        summary = {"metric": "accuracy", "best_step": 10, "seconds_per_step": 2.0,
                   "zero_shot": {"test": {"accuracy": 0.7}},
                   "final": {"dev": {"accuracy": 0.8, "loss": curve[-1]},
                             "test": {"accuracy": 0.79}}}  # fmt: skip
        (kept / "summary.json").write_text(json.dumps(summary))
        rows = [{"step": 5 * i, "split": "dev", "accuracy": 0.8, "loss": loss}
                for i, loss in enumerate(curve)]  # fmt: skip
        with gzip.open(kept / "metrics.jsonl.gz", "wt") as metrics:
            metrics.writelines(json.dumps(row) + "\n" for row in rows)
    args = argparse.Namespace(widen=3.0, max_widen=0, icl=0, out=tmp_path / "out", first=[],
                              task="sst2", model="m", steps=10, eval_every=5,
                              command="x", train_args=[])  # fmt: skip
    args.out.mkdir()
    # The loss is the arm's (--loss, else the task's): runs restored without a config too.
    arms = study_search.parse_arms(["agzo-lm=--optimizer agzo --loss lm"])
    grid = study_search.parse_grid(["mezo=1e-5", "agzo=1e-5", "agzo-lm=1e-5"], arms)
    study = study_scheduler.Study(args, arms, grid, [0], record)
    text = study.write_report()
    assert text is not None
    assert "- seed 0, MeZO's final dev loss 0.400: mezo 10, agzo 10\n" in text
    assert "- seed 0, MeZO's lowest dev loss 0.400: mezo 10, agzo 10\n" in text
    assert "Not timed (their dev loss is another loss than MeZO's): agzo-lm (lm)." in text
    # The curves share one training-loss axis, so each legend then names its loss.
    curves = {arm: (1e-5, 1, study_report.arm_loss(study, arm)) for arm in losses}
    assert study_report.legend_labels(curves) == {
        "mezo": "mezo lr 1e-05 (1 seed; candidates loss)",
        "agzo": "agzo lr 1e-05 (1 seed; candidates loss)",
        "agzo-lm": "agzo-lm lr 1e-05 (1 seed; lm loss)",
    }
    del curves["agzo-lm"]
    assert study_report.legend_labels(curves)["agzo"] == "agzo lr 1e-05 (1 seed)"
    # A --loss after `--` reaches every arm; the last one given wins, as in argparse.
    args.train_args = ["--loss=lm"]
    assert {study_report.arm_loss(study, arm) for arm in losses} == {"lm"}
    assert study_report.flag_value(["--loss", "lm", "--loss", "candidates"], "--loss") == (
        "candidates"
    )


def test_an_arm_on_another_loss_is_timed_against_the_mezo_arm_on_its_loss(
    tmp_path: Path,
) -> None:
    """agzo-lm is timed against mezo-lm's dev loss once mezo-lm has chosen its rate; the
    candidates-loss arms keep MeZO as their reference."""
    import gzip

    from study_record import Record

    curves = {
        "mezo": [0.55, 0.45, 0.40],
        "agzo": [0.55, 0.42, 0.39],
        "mezo-lm": [3.2, 0.9, 0.7],
        "agzo-lm": [3.2, 0.6, 0.8],  # below mezo-lm's final 0.7 at step 5, above it after
    }
    record = Record(tmp_path / "record")
    for arm, curve in curves.items():
        kept = record.runs / study_search.RunSpec(arm, 1e-5, 0).name
        kept.mkdir(parents=True)
        summary = {"metric": "accuracy", "best_step": 10, "seconds_per_step": 2.0,
                   "zero_shot": {"test": {"accuracy": 0.7}},
                   "final": {"dev": {"accuracy": 0.8, "loss": curve[-1]},
                             "test": {"accuracy": 0.79}}}  # fmt: skip
        (kept / "summary.json").write_text(json.dumps(summary))
        rows = [{"step": 5 * i, "split": "dev", "accuracy": 0.8, "loss": loss}
                for i, loss in enumerate(curve)]  # fmt: skip
        with gzip.open(kept / "metrics.jsonl.gz", "wt") as metrics:
            metrics.writelines(json.dumps(row) + "\n" for row in rows)
    args = argparse.Namespace(widen=3.0, max_widen=0, icl=0, out=tmp_path / "out", first=[],
                              task="sst2", model="m", steps=10, eval_every=5,
                              command="x", train_args=[])  # fmt: skip
    args.out.mkdir()
    arms = study_search.parse_arms(
        ["agzo-lm=--optimizer agzo --loss lm", "mezo-lm=--optimizer mezo --loss lm"]
    )
    grid = study_search.parse_grid(["mezo=1e-5", "agzo=1e-5", "mezo-lm=1e-5", "agzo-lm=1e-5"], arms)
    study = study_scheduler.Study(args, arms, grid, [0], record)
    text = study.write_report()
    assert text is not None
    assert "- seed 0, MeZO's final dev loss 0.400: mezo 10, agzo 10\n" in text
    lm_block = (
        "Steps to reach mezo-lm's final and its lowest dev loss, for the arms trained on the "
        "lm loss (same seed):\n\n"
        "- seed 0, mezo-lm's final dev loss 0.700: mezo-lm 10, agzo-lm 5\n"
        "- seed 0, mezo-lm's lowest dev loss 0.700: mezo-lm 10, agzo-lm 5"
    )
    assert lm_block in text
    assert "another loss than MeZO's" not in text  # every arm is timed against its own MeZO


RECORDS = sorted((Path(__file__).resolve().parents[1] / "docs" / "results").glob("study-*"))


@pytest.mark.parametrize("record", RECORDS, ids=[path.name for path in RECORDS])
def test_every_run_a_committed_study_reports_is_in_its_record(record: Path) -> None:
    """A fresh checkout continues each study in docs/results from its record: every run its
    report lists, and the command, must be there (committed, not ignored)."""
    from study_record import Record

    report = json.loads((record / "sweep.json").read_text())
    assert set(report["runs"]) <= set(Record(record).run_names())
    argv = json.loads((record / method_sweep.COMMAND_FILE).read_text())["argv"]
    assert argv[argv.index("--record") + 1] == f"docs/results/{record.name}"


def test_an_interrupted_run_resumes_from_its_checkpoint(model_dir: Path, tmp_path: Path) -> None:
    argv, out = tiny_study(
        model_dir, tmp_path, "--seeds", "0", "--jobs", "1", "--grid", "agzo=1e-3",
        "--keep-checkpoints",
    )  # fmt: skip
    method_sweep.main(argv)
    run = out / "agzo-lr0.001-seed0"
    first = json.loads((run / "summary.json").read_text())
    # As if cut off after its last checkpoint and before its summary was written; the
    # study continued by `--continue` (the recorded command).
    (run / "summary.json").unlink()
    method_sweep.main(["--continue", str(out)])
    commands = commands_run(out / "logs" / f"{run.name}.txt")
    assert len(commands) == 2 and "--overwrite" in commands[0] and "--resume" in commands[1]
    again = json.loads((run / "summary.json").read_text())
    assert again["steps"] == first["steps"] == 4
    assert again["final"]["test"] == first["final"]["test"]
    # The report names the study's full command, not the `--continue` that repeated it.
    assert "--grid agzo=1e-3" in json.loads((out / "sweep.json").read_text())["command"]


def test_a_signal_stops_the_runner_and_its_runs_keep_their_checkpoints(
    model_dir: Path, tmp_path: Path
) -> None:
    """Started as `nohup ... &` starts it (SIGINT ignored), the runner still stops on
    SIGINT, and its run saves a checkpoint of its last step on the way out."""
    import signal
    import subprocess
    import time

    argv, out = tiny_study(model_dir, tmp_path, "--seeds", "0", "--jobs", "1",
                           "--grid", "agzo=1e-3", "--steps", "100000", "--eval-every", "50",
                           "--checkpoint-every", "1")  # fmt: skip
    script = Path(method_sweep.__file__)
    runner = subprocess.Popen(
        [sys.executable, str(script), *argv], cwd=script.parents[1], start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    run = out / "agzo-lr0.001-seed0"
    try:
        deadline = time.time() + 120
        while not list((run / "checkpoints").glob("step-*")) and runner.poll() is None:
            assert time.time() < deadline, "the run wrote no checkpoint in 120 s"
            time.sleep(0.2)
        runner.send_signal(signal.SIGINT)
        _, err = runner.communicate(timeout=60)
    finally:  # a runner that did not stop takes its 100,000-step run with it
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)
    assert runner.returncode == 130, err.decode()
    assert f"--continue {out}" in err.decode()
    log = (out / "logs" / f"{run.name}.txt").read_text()
    assert "interrupted after step" in log  # the run saved and stopped, not killed
    assert not (run / "summary.json").exists() and list((run / "checkpoints").glob("step-*"))


def test_a_deadline_starts_only_runs_that_end_in_time(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run's wall time is kept once it finishes; a run like it that would not end by
    --until is not started, and the runner says what is left; --until is not recorded."""
    argv, out = tiny_study(model_dir, tmp_path, "--seeds", "0,1", "--grid", "agzo=1e-3")
    cut = argv.index("--")
    first = [*argv[:cut], "--seeds", "0", *argv[cut:]]  # the last --seeds counts
    method_sweep.main(first)
    durations = json.loads((out / "durations.json").read_text())
    assert list(durations) == ["agzo-lr0.001-seed0"] and durations["agzo-lr0.001-seed0"] > 1
    capsys.readouterr()

    method_sweep.main([*argv[:cut], "--until", "1s", *argv[cut:]])
    printed = capsys.readouterr().out
    assert "not started, agzo-lr0.001-seed1: needs about" in printed
    assert "1 wanted run(s) would not end by --until. Continue with: " in printed
    assert not (out / "logs" / "agzo-lr0.001-seed1.txt").exists()
    assert "--until" not in json.loads((out / "command.json").read_text())["argv"]
    assert "--until" not in json.loads((out / "sweep.json").read_text())["command"]

    # With time enough, the same study goes on.
    method_sweep.main(["--continue", str(out), "--until", "2h"])
    assert (out / "agzo-lr0.001-seed1" / "summary.json").is_file()
    assert "--until" not in json.loads((out / "command.json").read_text())["argv"]


def test_a_deadline_stops_the_runs_under_way_and_they_keep_their_checkpoints(
    model_dir: Path, tmp_path: Path
) -> None:
    """With nothing finished to judge by, a run starts; at the deadline it is stopped as
    SIGTERM stops it (a checkpoint of its last step), and the runner says so."""
    argv, out = tiny_study(model_dir, tmp_path, "--seeds", "0", "--grid", "agzo=1e-3",
                           "--steps", "100000", "--eval-every", "50",
                           "--checkpoint-every", "1", "--until", "30s")  # fmt: skip
    with pytest.raises(SystemExit) as stopped:
        method_sweep.main(argv)
    assert "no run finished" in str(stopped.value)
    assert "--until reached: stopped agzo-lr0.001-seed0; 1 wanted run(s) left." in str(
        stopped.value
    )
    assert f"Continue with: python benchmarks/method_sweep.py --continue {out}" in str(
        stopped.value
    )
    run = out / "agzo-lr0.001-seed0"
    assert "interrupted after step" in (out / "logs" / f"{run.name}.txt").read_text()
    assert not (run / "summary.json").exists() and list((run / "checkpoints").glob("step-*"))


def test_the_paper_style_table_puts_tasks_side_by_side(tmp_path: Path) -> None:
    import study_table

    def study(task: str, arms: dict[str, dict]) -> dict:
        return {"task": task, "metric": "accuracy", "steps": 1000, "command": "x",
                "zero_shot": {"0": 0.5, "1": 0.7}, "icl": {"0": 0.6}, "icl_demonstrations": 32,
                "arms": arms}  # fmt: skip

    done = {"chosen": 1e-5, "at_edge": True, "test": {"0": 0.8, "1": 0.9}}
    searching = {"chosen": None, "at_edge": False, "test": {}}
    tied = {"chosen": None, "at_edge": False, "tied": True, "test": {}}
    text = study_table.table([study("sst2", {"agzo": done, "mezo": searching}),
                              study("rte", {"agzo": searching, "mezo": tied})])  # fmt: skip
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines()}
    assert "60.0 ± 14.1 (2)" in rows["zero-shot"]
    assert "60.0 (1) [k = 32]" in rows["in-context"]
    assert "85.0 ± 7.1 (2) [lr 1e-05, edge]" in rows["agzo"] and "searching" in rows["agzo"]
    assert rows["mezo"].endswith("| searching | no rate chosen (every rate tied on dev) |")


def test_the_curvature_model_over_batches_averages_descent_and_cost(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import curvature_over_batches

    def probe(folder: Path, mezo: tuple[float, float], agzo: tuple[float, float]) -> Path:
        folder.mkdir()
        results = [
            {"name": name, "cosine": {"mean": 1e-4},
             "one_step": {"descent": a, "cost": b, "rayleigh": {"mean": 1e-5}}}
            for name, (a, b) in (("mezo", mezo), ("agzo", agzo))
        ]  # fmt: skip
        (folder / "alignment.json").write_text(json.dumps({"curvature": True, "results": results}))
        return folder

    first = probe(tmp_path / "seed0", (100.0, 1e6), (50.0, 5e5))
    second = probe(tmp_path / "seed1", (300.0, 3e6), (350.0, 1.1e6))
    monkeypatch.setattr(sys, "argv", ["x", str(first), str(second), "--lr", "1e-4"])
    curvature_over_batches.main()
    rows = {line.split(" | ")[0].strip("| "): line for line in capsys.readouterr().out.splitlines()}
    # One step at 1e-4 lowers a batch's loss by 1e-4·a − 1e-8·b / 2: on seed 0, MeZO's by
    # 0.005 and AGZO's by 0.0025. The mean row takes the mean a and b: MeZO 200 and 2e6
    # (0.01), AGZO 200 and 8e5 (0.016).
    assert rows["seed0"].endswith("| 0.50 |")
    assert rows["mean"].endswith("| 1.60 |")
