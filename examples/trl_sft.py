"""Zeroth-order SFT inside TRL: a chat dataset, SFTTrainer's formats, AGZO's step.

    pip install trl
    python examples/trl_sft.py                 # a tiny random model: seconds, shows the wiring
    python examples/trl_sft.py --smollm2       # SmolLM2-135M-Instruct: minutes on a CPU

The dataset is prompt / completion in the conversational format, so SFTTrainer applies
the model's chat template and puts the loss on the assistant's completion only.
"""

from __future__ import annotations

import argparse
import tempfile

from datasets import Dataset
from trl import SFTConfig

from agzo.integrations.trl import ZOSFTTrainer
from agzo.models import load_model
from agzo.testing import tiny_causal_lm, tiny_tokenizer

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def chats(n: int) -> Dataset:
    capitals = [("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Peru", "Lima")]
    rows = []
    for i in range(n):
        country, city = capitals[i % len(capitals)]
        rows.append(
            {
                "prompt": [{"role": "user", "content": f"What is the capital of {country}?"}],
                "completion": [{"role": "assistant", "content": city}],
            }
        )
    return Dataset.from_list(rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smollm2", action="store_true", help="the real model, not a tiny one")
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    if args.smollm2:
        model, tokenizer = load_model("smollm2-135m")
        lr = 1e-5
    else:
        model, tokenizer = tiny_causal_lm("llama"), tiny_tokenizer()
        tokenizer.chat_template = CHAT_TEMPLATE
        lr = 1e-3
    with tempfile.TemporaryDirectory() as out:
        trainer = ZOSFTTrainer(
            model=model,
            args=SFTConfig(
                output_dir=out,
                max_steps=args.steps,
                per_device_train_batch_size=4,
                learning_rate=lr,
                logging_steps=1,
                bf16=False,
                report_to=[],
                save_strategy="no",
            ),
            train_dataset=chats(16),
            processing_class=tokenizer,
            zo_optimizer="agzo",
            zo_kwargs={"eps": 1e-3},
        )
        trainer.train()
        print(
            "training loss by step:", [e["loss"] for e in trainer.state.log_history if "loss" in e]
        )


if __name__ == "__main__":
    main()
