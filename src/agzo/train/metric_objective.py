"""A non-differentiable objective: minus the task's own metric on the minibatch.

Zeroth-order methods need only the value of what they minimize, so a run can optimize
what it is judged by (MeZO's `--non_diff`): minus the accuracy of the predicted
candidates, or minus the mean F1 of the greedy answers. Each loss evaluation then costs
a scoring pass (classification) or a whole greedy generation (generative tasks), once per
probe: two generations per AGZO step, two or three per MeZO step. The value is a step
function of the weights (accuracy moves in 1/batch steps), so most perturbations change
nothing and the step is zero: expect it to need larger eps and batches than the loss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from agzo.tasks.answer_metrics import f1_score
from agzo.tasks.base import Example, GenerativeExample
from agzo.train.generate import greedy_generate
from agzo.train.setup import RunData

__all__ = ["metric_objective"]


def metric_objective(
    run: RunData, examples: Sequence[Example]
) -> tuple[Callable[[], Tensor], Tensor | None]:
    """(closure returning minus the metric on `examples`, attention mask for AGZO).

    Generation runs one forward per new token with growing masks, so the mask is left to
    the activation capture, which reads it from each call of the model.
    """
    scorer = run.scorer
    if run.encoder is not None:
        generative = [e for e in examples if isinstance(e, GenerativeExample)]
        prompts = run.encoder.encode(generative)
        stops = [e.stop_marker for e in generative]

        def minus_f1() -> Tensor:
            answers = greedy_generate(
                run.model, scorer.tokenizer, prompts, stops, run.config.max_new_tokens,
                pad_id=scorer.pad_id,
            )  # fmt: skip
            f1 = sum(f1_score(a, e.answers) for a, e in zip(answers, generative))
            return torch.tensor(-f1 / len(generative))

        return minus_f1, None

    batch = scorer.batch(examples)

    def minus_accuracy() -> Tensor:
        predicted = scorer.scores(batch).argmax(dim=1)
        return -(predicted == batch.labels).float().mean()

    return minus_accuracy, batch.attention_mask
