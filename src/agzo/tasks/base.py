"""What every task produces: prompts with candidate answers, scored by likelihood.

A classification example becomes one prompt and a list of candidate continuations
(the verbalized labels, or COPA's two sentences); the model is trained on the
cross-entropy of the correct candidate's tokens and predicts the candidate whose
tokens it finds most likely. Keeping every task in this one shape lets a single
objective and a single evaluator serve all of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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


@dataclass(frozen=True)
class GenerativeExample(Example):
    """An example whose answer is free text: a prompt and one or more gold answers.

    It is also a one-candidate `Example` whose candidate is the training target
    `separator + answers[0] + stop` (MeZO trains on " {answer}\\n"), so the candidate scorer
    computes its loss, the cross-entropy of the target's tokens given the prompt, unchanged.
    Evaluation generates instead: greedy decoding until `stop` (or EOS), scored by token F1
    and exact match against every gold answer.

    answers: the gold answers; the first one is the training target.
    separator: what joins the prompt and the answer (" " after "Answer:", "" in a chat).
    stop: what ends an answer: the training target ends with it and decoding stops at it.
    keep: the end of the prompt that left truncation must never cut (the question);
        a prompt whose `keep` alone exceeds the length budget is an error.
    messages: the conversation before the answer, for chat-formatted examples, as
        (role, content) pairs; `prompt` then holds a plain rendering until the tokenizer's
        chat template replaces it (`agzo.tasks.chat.apply_chat_template`).
    """

    candidates: tuple[str, ...] = field(init=False, default=())
    label: int = field(init=False, default=0)
    answers: tuple[str, ...] = field(kw_only=True)
    separator: str = field(default=" ", kw_only=True)
    stop: str = field(default="\n", kw_only=True)
    keep: str = field(default="", kw_only=True)
    messages: tuple[tuple[str, str], ...] | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        if isinstance(self.answers, str) or not self.answers:
            raise ValueError(f"an example needs at least one answer, got {self.answers!r}")
        if not all(isinstance(a, str) and a.strip() for a in self.answers):
            raise ValueError(f"answers must be non-empty text, got {self.answers!r}")
        object.__setattr__(self, "candidates", (self.target,))

    @property
    def target(self) -> str:
        """The text the model is trained to produce after the prompt."""
        return self.separator + self.answers[0] + self.stop

    @property
    def stop_marker(self) -> str:
        """The text at which a generated answer ends ("\\n", or a chat's end-of-turn)."""
        return self.stop.strip() or self.stop
