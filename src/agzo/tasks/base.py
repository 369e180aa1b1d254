"""What every task produces: prompts with candidate answers, scored by likelihood.

A classification example becomes one prompt and a list of candidate continuations
(the verbalized labels, or COPA's two sentences); the model is trained on the
cross-entropy of the correct candidate's tokens and predicts the candidate whose
tokens it finds most likely. Keeping every task in this one shape lets a single
objective and a single evaluator serve all of them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Example:
    """One scored example.

    prompt: the text the model conditions on (template already filled in).
    candidates: continuations to score; each is appended to the prompt verbatim, so a
        candidate usually starts with a space (" positive").
    label: index of the correct candidate.
    group: examples that share a group are scored together by group-level metrics
        (MultiRC's exact match per question); None for ordinary tasks.
    """

    prompt: str
    candidates: tuple[str, ...]
    label: int
    group: str | None = None

    def __post_init__(self) -> None:
        if len(self.candidates) < 2:
            raise ValueError(f"an example needs at least two candidates, got {self.candidates!r}")
        if not 0 <= self.label < len(self.candidates):
            raise ValueError(
                f"label {self.label} is out of range for {len(self.candidates)} candidates"
            )
