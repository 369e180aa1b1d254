"""ZOSFTTrainer: TRL's SFTTrainer with zeroth-order steps, on a tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from trl import SFTConfig  # noqa: E402

from agzo.integrations.trl import ZOSFTTrainer  # noqa: E402
from agzo.testing import tiny_causal_lm, tiny_tokenizer  # noqa: E402

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def test_zeroth_order_sft_on_a_chat_dataset(tmp_path: Path) -> None:
    model, tokenizer = tiny_causal_lm("llama"), tiny_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    rows = [
        {
            "prompt": [{"role": "user", "content": f"say {i}"}],
            "completion": [{"role": "assistant", "content": f"{i}"}],
        }
        for i in range(8)
    ]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = ZOSFTTrainer(
        model=model,
        args=SFTConfig(
            output_dir=str(tmp_path),
            max_steps=2,
            per_device_train_batch_size=4,
            learning_rate=1e-3,
            logging_steps=1,
            bf16=False,
            report_to=[],
            save_strategy="no",
        ),
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tokenizer,
        zo_optimizer="mezo",
    )
    # TRL's default, useless without a backward pass.
    assert not vars(trainer.args).get("activation_checkpointing")
    assert not vars(trainer.args).get("gradient_checkpointing")
    trainer.train()
    assert all(p.grad is None for p in model.parameters())  # no backward ran
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2
    # SFTTrainer's token metrics are filed as training metrics, not eval ones.
    assert "mean_token_accuracy" in logs[0] and "eval_mean_token_accuracy" not in logs[0]
    # The loss covers the completion only: the labels mask every prompt token.
    batch = next(iter(trainer.get_train_dataloader()))
    real, ignored = batch["attention_mask"] == 1, batch["labels"] == -100
    assert (real & ignored).any(dim=1).all() and (real & ~ignored).any(dim=1).all()
