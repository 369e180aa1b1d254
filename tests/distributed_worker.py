"""One process of a multi-process test run, started by tests/test_distributed.py.

Started like torchrun starts a worker (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT in the
environment) with the path of a JSON plan: a list of `agzo.train` jobs run one after
another in one process group (so that the imports are paid once). Each job records its
outcome and, for this process, the trained weights and every write it made under its
run directory (seen through Python's audit hooks), in `<plan>.rank<R>.json`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import save_file

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `tests` as a package

from agzo.train import TrainConfig, train  # noqa: E402

WRITES = {"os.mkdir", "os.rename", "os.replace", "os.remove", "shutil.rmtree", "os.link"}


def zo_trainer(settings: dict[str, Any]) -> torch.nn.Module:
    """A ZOTrainer run on the tiny model (tests/test_hf_trainer.py's data), its model."""
    from tests.test_distributed import zo_trainer_run

    return zo_trainer_run(Path(settings["output_dir"]), settings["per_device"])


def distinct(ids: torch.Tensor) -> list[int]:
    from agzo.observe.token_rows import TokenRows

    return TokenRows.from_lookups(ids).distinct().tolist()


def reductions(rank: int) -> dict[str, Any]:
    """Each reduction of the seam with different inputs (and example counts) per process."""
    from agzo.core.distributed import DistributedReducer

    reducer = DistributedReducer(examples=1 + rank)  # process 0: 1 example, process 1: 2
    mine_rows = [torch.tensor([1, 5]), torch.tensor([0, 5, 9, 11])][rank]
    gradient = torch.full((2,), float(rank + 1))
    reducer.mean_([gradient])
    product = torch.full((3, 1), float(rank + 1))
    # Two sums under way at once, and a blocking reduction between start and wait.
    first = reducer.sum_async(torch.full((2,), float(rank + 1)))
    second = reducer.sum_async(torch.full((1,), 10.0 * (rank + 1)))
    between = reducer.loss(1.0)
    started = {"first": first.wait().tolist(), "second": second.wait().tolist()}
    return {
        "async": started | {"between": between},
        "loss": reducer.loss(float(rank + 1)),
        "rows": distinct(reducer.gather_rows(mine_rows)),
        "no_rows": distinct(reducer.gather_rows(mine_rows[:0] if rank == 0 else mine_rows)),
        "norms": reducer.norm(torch.tensor([[3.0, 0.0], [4.0, 1.0]][rank])).tolist(),
        "sum": reducer.sum_(product).flatten().tolist(),
        "mean_gradient": gradient.tolist(),
    }


def drift(rank: int) -> str:
    """Weights that differ in one tensor on process 1: the checksum comparison's error."""
    from agzo.train.processes import Processes

    named = [("same", torch.ones(3)), ("drifted", torch.full((2,), 1.0 + 1e-6 * rank))]
    processes = Processes(rank=rank, world=dist.get_world_size())
    processes.check_in_sync(named[:1], step=3)  # in agreement: no error
    try:
        processes.check_in_sync(named, step=3)
    except RuntimeError as error:
        return f"{type(error).__name__}: {error}"
    return "no error"


def main() -> None:
    plan_path = Path(sys.argv[1])
    plan = json.loads(plan_path.read_text())
    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo", timeout=timedelta(seconds=plan.get("timeout", 60)))
    watched: list[str] = []
    writes: list[str] = []

    def audit(event: str, args: tuple[Any, ...]) -> None:
        if not watched:
            return
        if event == "open" and isinstance(args[0], (str, os.PathLike)):
            mode = str(args[1] or "r")
            if any(flag in mode for flag in "wax+"):
                path = os.fspath(args[0])
                if path.startswith(watched[0]):
                    writes.append(f"open {path}")
        elif event in WRITES and args and isinstance(args[0], (str, os.PathLike)):
            path = os.fspath(args[0])
            if path.startswith(watched[0]):
                writes.append(f"{event} {path}")

    sys.addaudithook(audit)
    outcomes = []
    for job in plan["jobs"]:
        watched[:] = [str(Path(job["config"]["output_dir"]).resolve())]
        writes.clear()

        def on_step(step: int, loss: float | None, job: dict[str, Any] = job) -> None:
            if job.get("die_at") == step and job.get("die_rank") == rank:
                os._exit(3)  # a crash: no clean-up, no goodbye to the others

        started = time.monotonic()
        outcome: dict[str, Any] = {"name": job["name"]}
        try:
            if job.get("kind") == "trainer":
                model = zo_trainer(job["config"])
                steps = 0
            elif job.get("kind") == "reducer":
                outcome["reduced"] = reductions(rank)
                model, steps = torch.nn.Linear(1, 1), 0
            elif job.get("kind") == "drift":
                outcome["caught"] = drift(rank)
                model, steps = torch.nn.Linear(1, 1), 0
            else:
                result = train(
                    TrainConfig.from_dict(job["config"]),
                    resume=job.get("resume", False),
                    quiet=True,
                    on_step=on_step,
                )
                model, steps = result.model, result.steps
        except Exception as error:  # noqa: BLE001 - the test reads the error's type and text
            outcome |= {"error": type(error).__name__, "message": str(error)}
        else:
            weights = {n: p.detach().clone() for n, p in model.named_parameters()}
            target = plan_path.with_name(f"{job['name']}.rank{rank}.safetensors")
            save_file(weights, str(target))
            outcome |= {"weights": str(target), "steps": steps}
        outcome |= {"seconds": time.monotonic() - started, "writes": list(writes)}
        outcomes.append(outcome)
        plan_path.with_name(f"{plan_path.stem}.rank{rank}.json").write_text(json.dumps(outcomes))
        if "error" in outcome and outcome["error"] != "TrainError":
            break  # the group is broken: nothing more can run
    watched.clear()
    # Left to interpreter shutdown, gloo's threads may still hold tensors of finished
    # work and abort the process (SIGABRT) while Python is torn down.
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
