"""Gradient accumulation: a step's loss over N micro-batches, one in memory at a time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from agzo.observe import AccumulatedCapture, ActivationCapture
from agzo.params import describe_tensors, select_named_parameters
from agzo.train import TrainConfig, train
from agzo.train.config import ConfigError
from agzo.train.objective import CandidateScorer
from tests.test_distributed import tiny_settings, trained
from tests.tiny import batch, tiny_model


def test_accumulated_basis_is_the_whole_batch_one_step_basis() -> None:
    """Σᵢ Hᵢᵀ(Hᵢ Q₀) over micro-batches is HᵀH Q₀ of the whole batch: one power step."""
    model = tiny_model("llama").eval()
    tensors = describe_tensors(select_named_parameters(model, None, None), model)
    ids, mask, _ = batch("llama", n=6, pad=3)
    for rank in (1, 2):
        whole = ActivationCapture(tensors, rank, 1, seed=5, root=model)
        with torch.no_grad(), whole:
            model(input_ids=ids, attention_mask=mask)
        split = AccumulatedCapture(tensors, rank, 1, seed=5, root=model)
        with torch.no_grad(), split:
            for part in range(3):  # padding rows differ per micro-batch and are dropped
                rows = slice(2 * part, 2 * part + 2)
                model(input_ids=ids[rows], attention_mask=mask[rows])
        expected, got = whole.result, split.result
        assert expected.bases.keys() == got.bases.keys()
        for index, basis in expected.bases.items():
            torch.testing.assert_close(got.bases[index], basis, atol=1e-5, rtol=0)
        for index, rows_seen in expected.token_rows.items():
            assert torch.equal(got.token_rows[index].ids, rows_seen.ids)
            assert torch.equal(got.token_rows[index].first, rows_seen.first)


@pytest.mark.parametrize(
    "changes",
    [
        {"optimizer": "mezo"},
        {"optimizer": "lozo", "update": "adam"},
        {"optimizer": "agzo", "power_steps": 1},
        {"optimizer": "fo-adamw"},
    ],
    ids=["mezo", "lozo-adam", "agzo-K1", "fo-adamw"],
)
def test_accumulating_micro_batches_gives_the_whole_batch_step(
    changes: dict[str, Any], model_dir: Path, tmp_path: Path
) -> None:
    whole = train(
        TrainConfig.from_dict(tiny_settings(model_dir, tmp_path / "whole", **changes)),
        quiet=True,
    )
    split = train(
        TrainConfig.from_dict(
            tiny_settings(model_dir, tmp_path / "split", accumulate=2, **changes)
        ),
        quiet=True,
    )
    mine = trained(split.model)
    for key, value in trained(whole.model).items():
        torch.testing.assert_close(mine[key], value, rtol=1e-4, atol=1e-6, msg=key)


def test_the_model_sees_one_micro_batch_at_a_time(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = TrainConfig.from_dict(tiny_settings(model_dir, tmp_path / "run", accumulate=4))
    rows: list[int] = []
    original = CandidateScorer.loss

    def loss(self: CandidateScorer, encoded: Any) -> torch.Tensor:
        rows.append(encoded.input_ids.shape[0])  # the training loss's forward
        return original(self, encoded)

    monkeypatch.setattr(CandidateScorer, "loss", loss)
    train(config, quiet=True)
    assert rows and set(rows) == {1}  # batch 4 in 4 micro-batches of one example


def test_accumulate_must_divide_the_batch(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--accumulate 3 does not divide --batch-size 4"):
        TrainConfig.from_dict(tiny_settings(model_dir, tmp_path / "run", accumulate=3))
    assert not (tmp_path / "run").exists()
