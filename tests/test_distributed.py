"""Data-parallel training over torch.distributed: two CPU processes over gloo.

One pair of worker processes (tests/distributed_worker.py, one thread each) runs a plan
of jobs, so the imports are paid once; the single-process references run here. Every
spawned process is bounded by a timeout.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from agzo.core.reduce import LOCAL
from agzo.testing import tiny_causal_lm
from agzo.train import TrainConfig, train
from agzo.train.errors import TrainError
from agzo.train.processes import Processes, check_batch_split, split_evenly

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("distributed_worker.py")
# The methods and update rules the two-process runs cover (every method kind: activation,
# Gaussian and low-rank probes, first-order; every update rule).
RUNS = {
    "agzo": {"optimizer": "agzo"},
    "mezo-adam": {"optimizer": "mezo", "update": "adam"},
    "lozo-momentum": {"optimizer": "lozo", "update": "momentum", "two_sided": True},
    "fo-sgd": {"optimizer": "fo-sgd"},
    # Micro-batches within each process: the exact one-step basis sums over both.
    "agzo-K1-accumulate": {"optimizer": "agzo", "power_steps": 1, "accumulate": 2},
    # Each process builds its own adapters: the run's seed must give them one start.
    "agzo-lora": {"optimizer": "agzo", "lora_rank": 2},
}


def reviews(folder: Path) -> Path:
    """Sentiment rows whose label words are single tokens of the tiny tokenizer."""
    path = folder / "reviews.jsonl"
    if not path.is_file():
        words = ("bad", "good")
        rows = [{"text": f"review {i}: it was {words[i % 2]}", "label": i % 2} for i in range(40)]
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def tiny_settings(model_dir: Path, out: Path, **changes: Any) -> dict[str, Any]:
    """A tiny run on one-token label words: the scorer's head then reads the same last
    position of every row whatever the batch, so a share of the batch and the whole batch
    observe the same rows (with longer label words the head reads as many last positions
    as the batch's longest word, which depends on the batch)."""
    return {
        "model": str(model_dir),
        "task": "custom",
        "data_file": str(reviews(model_dir.parent)),
        "template": "{text}. Overall it was",
        "labels": "0=bad,1=good",
        "steps": 4,
        "batch_size": 4,
        "n_train": 24,
        "n_dev": 8,
        "n_test": 8,
        "eval_every": 2,
        "checkpoint_every": 2,
        "output_dir": str(out),
        "tensorboard": False,
        "save_mode": "final",
        "sync_check_every": 1,
        "keep_checkpoints": 3,
    } | changes


def zo_trainer_run(output_dir: Path, per_device: int) -> torch.nn.Module:
    """Three AGZO steps of ZOTrainer on the tiny Llama; returns the trained model."""
    from transformers import DataCollatorForLanguageModeling, TrainingArguments

    from agzo.integrations import ZOTrainer
    from agzo.testing import tiny_causal_lm, tiny_tokenizer
    from tests.test_hf_trainer import _dataset

    tok = tiny_tokenizer()
    model = tiny_causal_lm("llama")
    args = TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=per_device,
        max_steps=3,
        learning_rate=1e-2,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        remove_unused_columns=False,
        seed=7,
    )
    trainer = ZOTrainer(
        model=model,
        args=args,
        train_dataset=_dataset(tok),
        data_collator=DataCollatorForLanguageModeling(tok, mlm=False),
        zo_kwargs={"eps": 1e-3},
    )
    trainer.train()
    return model


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_workers(plan: dict[str, Any], folder: Path, world: int = 2, timeout: float = 120):
    """Start `world` workers on `plan`; their outcomes by rank, and the seconds they took."""
    plan_path = folder / "plan.json"
    plan_path.write_text(json.dumps(plan))
    env = os.environ | {
        "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "WORLD_SIZE": str(world),
    }
    started = time.monotonic()
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(plan_path)],
            env=env | {"RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for r in range(world)
    ]
    logs = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=max(1.0, timeout - (time.monotonic() - started)))
            logs.append(out.decode(errors="replace"))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    outcomes = []
    for r in range(world):
        path = folder / f"plan.rank{r}.json"
        assert path.is_file(), f"rank {r} recorded nothing:\n{logs[r][-3000:]}"
        outcomes.append({o["name"]: o for o in json.loads(path.read_text())})
    return outcomes, time.monotonic() - started, [p.returncode for p in procs], logs


def trained(result_model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in result_model.named_parameters()}


@pytest.fixture(scope="module")
def two_processes(model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """One two-process plan: bad input, each method, resumes, and finally a dying rank."""
    folder = tmp_path_factory.mktemp("distributed")
    torch.set_num_threads(1)
    # A one-process run of 2 steps, which the two processes resume to 4.
    resumed = folder / "resume-1-to-2"
    train(TrainConfig.from_dict(tiny_settings(model_dir, resumed, steps=2)), quiet=True)
    jobs: list[dict[str, Any]] = [
        {"name": "odd-batch", "config": tiny_settings(model_dir, folder / "odd", batch_size=5)},
    ]
    jobs += [
        {"name": name, "config": tiny_settings(model_dir, folder / name, **changes)}
        for name, changes in RUNS.items()
    ]
    jobs.append(
        {
            "name": "resume-1-to-2",
            "config": tiny_settings(model_dir, resumed, steps=4),
            "resume": True,
        }
    )
    jobs.append(
        {
            "name": "zo-trainer",
            "kind": "trainer",
            "config": {"output_dir": str(folder / "zo-trainer"), "per_device": 2},
        }
    )
    jobs.append(
        {
            "name": "diverges",
            "config": tiny_settings(
                model_dir,
                folder / "diverges",
                optimizer="fo-sgd",
                lr=100.0,
                steps=8,
                stop_diverged=3,
            ),
        }
    )
    jobs.append({"name": "drift", "kind": "drift", "config": {"output_dir": str(folder)}})
    jobs.append({"name": "reducer", "kind": "reducer", "config": {"output_dir": str(folder)}})
    jobs.append(
        {
            "name": "dies",
            "config": tiny_settings(model_dir, folder / "dies", steps=6),
            "die_at": 2,
            "die_rank": 1,
        }
    )
    outcomes, seconds, codes, logs = run_workers({"jobs": jobs, "timeout": 60}, folder)
    return {"folder": folder, "outcomes": outcomes, "seconds": seconds, "codes": codes}


@pytest.mark.parametrize("name", list(RUNS))
def test_two_processes_reach_the_one_process_weights_on_the_union_batch(
    name: str, two_processes: dict[str, Any], model_dir: Path, tmp_path: Path
) -> None:
    ranks = [outcomes[name] for outcomes in two_processes["outcomes"]]
    assert all("error" not in r for r in ranks), ranks
    first, second = (load_file(r["weights"]) for r in ranks)
    for key in first:  # bit-identical across processes
        assert torch.equal(first[key], second[key]), key
    whole_batch = {k: v for k, v in RUNS[name].items() if k != "accumulate"}
    single = train(
        TrainConfig.from_dict(tiny_settings(model_dir, tmp_path / "one", **whole_batch)),
        quiet=True,
    )
    for key, value in trained(single.model).items():
        torch.testing.assert_close(first[key], value, rtol=1e-4, atol=1e-6, msg=key)
    # The steps moved the weights: matching would otherwise be trivial.
    run_dir = two_processes["folder"] / name
    at_2 = load_file(str(run_dir / "checkpoints" / "step-000002" / "weights.safetensors"))
    assert any(not torch.equal(at_2[k], first[k]) for k in at_2)


def test_zo_trainer_runs_under_two_processes_in_agreement(
    two_processes: dict[str, Any],
) -> None:
    ranks = [outcomes["zo-trainer"] for outcomes in two_processes["outcomes"]]
    assert all("error" not in r for r in ranks), ranks
    first, second = (load_file(r["weights"]) for r in ranks)
    for key in first:  # each process trained on its own batches, yet the steps agree
        assert torch.equal(first[key], second[key]), key
    start = dict(tiny_causal_lm("llama").named_parameters())
    assert any(not torch.equal(start[k], first[k]) for k in first)


def test_each_reduction_of_the_seam_across_two_processes(two_processes: dict[str, Any]) -> None:
    """Process 0 holds 1 example with loss 1, process 1 holds 2 with mean loss 2."""
    for outcomes in two_processes["outcomes"]:
        reduced = outcomes["reducer"]["reduced"]
        assert reduced["loss"] == pytest.approx(5 / 3)  # (1·1 + 2·2) / 3 examples
        assert reduced["mean_gradient"] == pytest.approx([5 / 3, 5 / 3])
        assert reduced["rows"] == [0, 1, 5, 9, 11]
        assert reduced["no_rows"] == [0, 5, 9, 11]  # a process without rows still takes part
        assert reduced["norms"] == pytest.approx([5.0, 1.0])  # √(3² + 4²), √(0² + 1²)
        assert reduced["sum"] == [3.0, 3.0, 3.0]
        assert reduced["async"] == {"first": [3.0, 3.0], "second": [30.0], "between": 1.0}


def test_processes_whose_weights_drift_apart_stop_with_the_tensor_named(
    two_processes: dict[str, Any],
) -> None:
    for outcomes in two_processes["outcomes"]:
        caught = outcomes["drift"]["caught"]
        assert caught.startswith("RanksDivergedError: after step 3 the weights of process 1")
        assert "(first in drifted, 1 tensor(s) in all)" in caught


def test_only_process_0_writes(two_processes: dict[str, Any]) -> None:
    main, other = (outcomes["agzo"] for outcomes in two_processes["outcomes"])
    assert other["writes"] == []
    assert any("metrics.jsonl" in w for w in main["writes"])
    run_dir = two_processes["folder"] / "agzo"
    assert (run_dir / "model").is_dir() and (run_dir / "summary.json").is_file()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if r["split"] == "train"]
    assert train_steps == [1, 2, 3, 4]  # one line per step: a single writer


def test_a_divergence_process_0_sees_stops_every_process(two_processes: dict[str, Any]) -> None:
    """Only process 0 evaluates; the other learns of the stop from it, at the same step."""
    ranks = [outcomes["diverges"] for outcomes in two_processes["outcomes"]]
    assert all("error" not in r for r in ranks), ranks
    assert [r["steps"] for r in ranks] == [2, 2]
    summary = json.loads((two_processes["folder"] / "diverges" / "summary.json").read_text())
    assert summary["stopped_early"]["step"] == 2


def test_a_batch_that_does_not_divide_is_refused_before_anything_is_written(
    two_processes: dict[str, Any],
) -> None:
    for outcomes in two_processes["outcomes"]:
        odd = outcomes["odd-batch"]
        assert odd["error"] == "TrainError"
        assert "batch_size 5 does not divide across 2 processes" in odd["message"]
        assert "--batch-size 6 or 4" in odd["message"]
    assert not (two_processes["folder"] / "odd").exists()


def test_one_process_checkpoint_resumes_in_two(
    two_processes: dict[str, Any], model_dir: Path, tmp_path: Path
) -> None:
    ranks = [outcomes["resume-1-to-2"] for outcomes in two_processes["outcomes"]]
    assert all("error" not in r and r["steps"] == 4 for r in ranks), ranks
    straight = train(
        TrainConfig.from_dict(tiny_settings(model_dir, tmp_path / "straight")), quiet=True
    )
    resumed = load_file(ranks[0]["weights"])
    for key, value in trained(straight.model).items():
        torch.testing.assert_close(resumed[key], value, rtol=1e-4, atol=1e-6, msg=key)


def test_two_process_checkpoint_resumes_in_one(
    two_processes: dict[str, Any], model_dir: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "agzo"
    shutil.copytree(two_processes["folder"] / "agzo", run_dir)
    config = TrainConfig.from_dict(tiny_settings(model_dir, run_dir, steps=6))
    resumed = train(config, resume=True, quiet=True)
    straight = train(
        TrainConfig.from_dict(tiny_settings(model_dir, tmp_path / "straight", steps=6)),
        quiet=True,
    )
    assert resumed.steps == 6
    mine = trained(resumed.model)
    for key, value in trained(straight.model).items():
        torch.testing.assert_close(mine[key], value, rtol=1e-4, atol=1e-6, msg=key)


def test_when_a_process_dies_the_other_stops_with_a_clear_error(
    two_processes: dict[str, Any],
) -> None:
    survivor = two_processes["outcomes"][0]["dies"]
    assert survivor["error"] == "ProcessGroupError"
    assert "another process of the run died or stopped answering" in survivor["message"]
    assert survivor["seconds"] < 30  # not the collective timeout, let alone a hang
    assert two_processes["codes"][1] == 3  # the one that died
    assert two_processes["codes"][0] == 0  # the survivor recorded its error and left
    assert not list((two_processes["folder"] / "dies" / "checkpoints").glob(".tmp-*"))


THREE = {
    "agzo-3": {"optimizer": "agzo", "batch_size": 6},
    "mezo-3": {"optimizer": "mezo", "batch_size": 6},
}


def test_three_processes_reach_the_one_process_weights(
    model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Beyond a pair: three ranks (two examples each, padded to their own lengths) agree
    bit for bit and match one process on the whole batch of six."""
    folder = tmp_path_factory.mktemp("three")
    jobs = [
        {"name": name, "config": tiny_settings(model_dir, folder / name, **changes)}
        for name, changes in THREE.items()
    ]
    outcomes, _, codes, logs = run_workers({"jobs": jobs, "timeout": 60}, folder, world=3)
    assert codes == [0, 0, 0], logs
    for name, changes in THREE.items():
        ranks = [o[name] for o in outcomes]
        assert all("error" not in r for r in ranks), ranks
        weights = [load_file(r["weights"]) for r in ranks]
        for key in weights[0]:
            assert all(torch.equal(weights[0][key], w[key]) for w in weights[1:]), key
        single = train(
            TrainConfig.from_dict(tiny_settings(model_dir, folder / f"{name}-one", **changes)),
            quiet=True,
        )
        for key, value in trained(single.model).items():
            torch.testing.assert_close(weights[0][key], value, rtol=1e-4, atol=1e-6, msg=key)
        # The steps moved the weights: matching would otherwise be trivial.
        at_2 = load_file(str(folder / name / "checkpoints" / "step-000002" / "weights.safetensors"))
        assert any(not torch.equal(at_2[k], weights[0][k]) for k in at_2), name


def test_batch_split_rules() -> None:
    assert split_evenly(list(range(6)), 3, 1) == [2, 3]
    check_batch_split(8, 2, 2)
    with pytest.raises(TrainError, match="--accumulate 3 does not divide the 4 examples"):
        check_batch_split(8, 2, 3)
    single = Processes()
    assert single.reducer is LOCAL and single.take([1, 2, 3]) == [1, 2, 3]


@pytest.mark.slow
def test_torchrun_launches_the_command(model_dir: Path, tmp_path: Path) -> None:
    """`torchrun --nproc-per-node 2 -m agzo train` end to end (about 15 s)."""
    out = tmp_path / "run"
    env = os.environ | {
        "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": "1",
    }
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    command += ["--master-port", str(free_port()), "-m", "agzo", "train", "--quiet"]
    command += ["--model", str(model_dir), "--steps", "2", "--batch-size", "4"]
    command += ["--n-train", "24", "--n-dev", "8", "--n-test", "8", "--no-tensorboard"]
    command += ["--output-dir", str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["steps"] == 2
