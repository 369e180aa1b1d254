"""Fine-tune a causal LM with `transformers.Trainer` machinery and forward passes only.

This is an ordinary Trainer script; the lines marked `# ZO:` are the whole change from
first-order training (the import, the class name, the method and its eps).

    python examples/hf_trainer.py                          # tiny random model, seconds on CPU
    python examples/hf_trainer.py --model smollm2-135m --steps 100
    python examples/hf_trainer.py --method mezo --lr 3e-6 --grad-accum 2

The data is a dozen in-code sentences; the script prints the evaluation loss on them
before and after training.
"""

from __future__ import annotations

import argparse
import tempfile
from typing import Any

from transformers import DataCollatorForLanguageModeling, TrainingArguments

from agzo.integrations import (
    ZO_METHODS,
    ZOTrainer,
)  # ZO: instead of `from transformers import Trainer`
from agzo.models import load_model
from agzo.testing import tiny_causal_lm, tiny_tokenizer

SENTENCES = (
    "It was great, so the answer is yes.",
    "It was terrible, so the answer is no.",
    "It was good, so the answer is yes.",
    "It was bad, so the answer is no.",
    "The film was great because the cast was good.",
    "The film was terrible because the plot was bad.",
    "The food was good, so yes.",
    "The food was bad, so no.",
    "It was true, so yes.",
    "It was false, so no.",
    "It was neither good nor bad, so maybe.",
    "It was great and good, so yes.",
)

# Starting points, not tuned values: zeroth-order steps want far smaller lr than Adam.
DEFAULT_LR = {"tiny": 1e-2, "other": 1e-5}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="'tiny', 'smollm2-135m' or a path")
    parser.add_argument("--method", default="agzo", choices=sorted(ZO_METHODS))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--lr", type=float, default=None, help="peak lr (linear decay)")
    parser.add_argument("--eps", type=float, default=1e-3, help="perturbation scale mu")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpu", action="store_true", help="stay on CPU even with a GPU")
    parser.add_argument("--output-dir", default=None, help="default: a temporary directory")
    return parser.parse_args()


def main() -> None:
    options = parse_args()
    if options.model == "tiny":
        model, tokenizer = tiny_causal_lm("llama"), tiny_tokenizer()
    else:
        model, tokenizer = load_model(options.model)
    lr = options.lr or DEFAULT_LR["tiny" if options.model == "tiny" else "other"]
    data: list[dict[str, Any]] = [dict(tokenizer(text)) for text in SENTENCES]

    args = TrainingArguments(
        output_dir=options.output_dir or tempfile.mkdtemp(prefix="agzo-trainer-"),
        max_steps=options.steps,
        per_device_train_batch_size=options.batch_size,
        per_device_eval_batch_size=options.batch_size,
        gradient_accumulation_steps=options.grad_accum,
        learning_rate=lr,
        lr_scheduler_type="linear",
        logging_steps=max(1, options.steps // 10),
        save_strategy="no",
        report_to="none",
        seed=options.seed,
        use_cpu=options.cpu,
        remove_unused_columns=False,
    )
    trainer = ZOTrainer(  # ZO: instead of Trainer(
        model=model,
        args=args,
        train_dataset=data,
        eval_dataset=data,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        zo_optimizer=options.method,  # ZO: the method...
        zo_kwargs={"eps": options.eps},  # ZO: ...and its arguments
    )
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    steps = trainer.zeroth_order_optimizer.step_count
    print(
        f"{options.method} on {options.model}: {steps} steps, eval loss {before:.4f} -> {after:.4f}"
    )


if __name__ == "__main__":
    main()
