"""Generative tasks: the answer metrics, the answer-token loss, greedy decoding, and
SQuAD / DROP read from their official layouts."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

from agzo.cli import main
from agzo.tasks import TaskDataError, load_splits
from agzo.tasks.answer_metrics import (
    answer_metrics,
    exact_match_score,
    f1_score,
    normalize_answer,
)
from agzo.tasks.base import GenerativeExample
from agzo.tasks.reading import drop_answers
from agzo.testing import tiny_causal_lm, tiny_tokenizer
from agzo.train.generate import cut_at_stop, fit_prompt, greedy_generate
from agzo.train.objective import CandidateScorer

# --------------------------------------------------------------------------- metrics


def test_normalization_follows_squad() -> None:
    assert normalize_answer("  The Denver   Broncos! ") == "denver broncos"
    assert normalize_answer("an apple, a pear") == "apple pear"
    assert normalize_answer("Theater") == "theater"  # "the" only as a whole word


def test_f1_and_exact_match_by_hand() -> None:
    # prediction "denver broncos team" vs gold "the denver broncos": 2 common tokens,
    # precision 2/3, recall 2/2, F1 = 2 * (2/3) * 1 / (2/3 + 1) = 0.8.
    assert f1_score("Denver Broncos team", ["the Denver Broncos"]) == pytest.approx(0.8)
    assert exact_match_score("Denver Broncos team", ["the Denver Broncos"]) == 0.0
    # max over golds: the second gold matches exactly.
    assert f1_score("Broncos", ["Denver Broncos", "the Broncos"]) == 1.0
    assert exact_match_score("broncos.", ["Denver Broncos", "the Broncos"]) == 1.0
    # repeated tokens count with multiplicity: "a a b" vs "a b": common 2 -> P 2/3, R 1.
    assert f1_score("x x y", ["x y"]) == pytest.approx(0.8)
    assert f1_score("", ["Denver"]) == 0.0
    result = answer_metrics(["Denver Broncos team", "nothing"], [["Denver Broncos"], ["yes"]])
    assert result == pytest.approx({"f1": 0.4, "em": 0.0})


def test_an_example_needs_an_answer() -> None:
    with pytest.raises(ValueError, match="at least one answer"):
        GenerativeExample("Q?", answers=())
    with pytest.raises(ValueError, match="non-empty"):
        GenerativeExample("Q?", answers=(" ",))
    example = GenerativeExample("Question: 1+1?\nAnswer:", answers=("2", "two"))
    assert example.candidates == (" 2\n",) and example.label == 0


# --------------------------------------------------------------------------- the loss


def test_answer_token_loss_matches_a_dense_computation() -> None:
    """The loss is the mean over examples of the mean cross-entropy of the target's
    tokens (answer + newline), computed here from full logits at every position."""
    torch.manual_seed(0)
    model, tokenizer = tiny_causal_lm("llama").eval(), tiny_tokenizer()
    examples = [
        GenerativeExample("Context: cats\nQuestion: what?\nAnswer:", answers=("cats are good",)),
        GenerativeExample("Question: sky?\nAnswer:", answers=("blue",)),
    ]
    scorer = CandidateScorer(model, tokenizer)
    with torch.no_grad():
        loss = scorer.loss(scorer.batch(examples))
        dense = []
        for example in examples:
            prompt = tokenizer(example.prompt)["input_ids"]
            full = tokenizer(example.prompt + example.target)["input_ids"]
            assert full[: len(prompt)] == prompt
            logits = model(torch.tensor([full])).logits[0]
            targets = torch.tensor(full[len(prompt) :])
            predicted_by = logits[len(prompt) - 1 : len(full) - 1]
            dense.append(nn.functional.cross_entropy(predicted_by, targets))
    assert float(loss) == pytest.approx(float(torch.stack(dense).mean()), rel=1e-5)


# --------------------------------------------------------------------------- decoding


class ScriptedLM(nn.Module):
    """A causal LM that emits `script` (token ids) one by one, whatever the input; it
    counts its calls and checks that each call after the first feeds one token and the
    cache back, as decoding with a KV cache must."""

    def __init__(self, script: list[int], vocab: int) -> None:
        super().__init__()
        self.script, self.vocab = script, vocab
        self.weight = nn.Parameter(torch.zeros(1))
        self.generation_config = SimpleNamespace(eos_token_id=2)
        self.calls = 0

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor, use_cache: bool = True,
                past_key_values: Any = None, logits_to_keep: int = 0) -> Any:  # fmt: skip
        if self.calls:
            assert input_ids.shape[1] == 1 and past_key_values == ("cache", self.calls - 1)
        token = self.script[min(self.calls, len(self.script) - 1)]
        logits = torch.zeros(input_ids.shape[0], input_ids.shape[1], self.vocab)
        logits[:, -1, token] = 1.0
        self.calls += 1
        return SimpleNamespace(logits=logits, past_key_values=("cache", self.calls - 1))


def test_decoding_stops_at_the_newline() -> None:
    tokenizer = tiny_tokenizer()
    script = tokenizer("Paris\nLondon", add_special_tokens=False)["input_ids"]
    model = ScriptedLM(script, len(tokenizer))
    (answer,) = greedy_generate(model, tokenizer, [[5, 6, 7]], ["\n"], max_new_tokens=50)  # type: ignore[arg-type]
    assert answer == "Paris"
    assert model.calls == len(tokenizer("Paris\n", add_special_tokens=False)["input_ids"])


def test_decoding_stops_at_eos_and_at_max_new_tokens() -> None:
    tokenizer = tiny_tokenizer()
    paris = tokenizer("Paris", add_special_tokens=False)["input_ids"]
    model = ScriptedLM([*paris, 2, *paris], len(tokenizer))
    assert greedy_generate(model, tokenizer, [[5]], ["\n"]) == ["Paris"]  # type: ignore[arg-type]
    endless = ScriptedLM([paris[0]], len(tokenizer))
    (text,) = greedy_generate(endless, tokenizer, [[5]], ["\n"], max_new_tokens=3)  # type: ignore[arg-type]
    assert endless.calls == 3 and text == tokenizer.decode([paris[0]] * 3)


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gpt2"])
def test_cached_batched_decoding_equals_recomputing_each_prompt(arch: str) -> None:
    """With left padding and the KV cache, every row gets what a cache-free loop that
    re-runs its whole sequence alone would generate."""
    model, tokenizer = tiny_causal_lm(arch).eval(), tiny_tokenizer()
    prompts = [tokenizer(t)["input_ids"] for t in ("Question: a?\nAnswer:", "Hi", "so so so")]
    batched = greedy_generate(model, tokenizer, prompts, ["\n"] * 3, max_new_tokens=6)
    for prompt, got in zip(prompts, batched):
        ids = list(prompt)
        with torch.no_grad():
            for _ in range(6):
                ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
        expected = cut_at_stop(tokenizer.decode(ids[len(prompt) :]), "\n")[0]
        assert got == expected


def test_prompts_are_truncated_from_the_left_keeping_the_question() -> None:
    assert fit_prompt(list(range(10, 20)), [1], budget=5) == (1, 16, 17, 18, 19)
    assert fit_prompt(list(range(10, 20)), [1], budget=5, keep_ids=4) == (1, 16, 17, 18, 19)
    with pytest.raises(ValueError, match="does not fit even after truncation"):
        fit_prompt(list(range(10, 20)), [1], budget=5, keep_ids=5)


# --------------------------------------------------------------------------- SQuAD, DROP


def test_squad_uses_mezo_template_and_protocol_sizes(shared_data_dir: Path) -> None:
    splits = load_splits("squad", shared_data_dir, seed=0)
    assert (len(splits.train), len(splits.dev), len(splits.test)) == (1000, 500, 1000)
    example = splits.test[0]
    assert isinstance(example, GenerativeExample)
    assert example.prompt.startswith("Title: ") and "\nContext: " in example.prompt
    assert example.prompt.endswith("\nAnswer:") and example.keep.startswith("Question: ")
    assert not {e.prompt for e in splits.train} & {e.prompt for e in splits.test}


def test_drop_is_carved_and_says_so(shared_data_dir: Path) -> None:
    splits = load_splits("drop", shared_data_dir, seed=0)
    assert any("no training split" in note for note in splits.notes)
    assert splits.test[0].prompt.startswith("Passage: ")
    assert not {e.prompt for e in splits.train} & {e.prompt for e in splits.test}


def test_drop_gold_strings_from_numbers_spans_and_dates() -> None:
    empty_date = {"day": "", "month": "", "year": ""}
    assert drop_answers({"number": "3", "date": empty_date, "spans": []}, "x") == ["3"]
    spans = {"number": "", "date": empty_date, "spans": ["Brown", "Smith"]}
    assert drop_answers(spans, "x") == ["Brown, Smith"]
    date = {"number": "", "date": {"day": "4", "month": "July", "year": "1999"}, "spans": []}
    assert drop_answers(date, "x") == ["July 4 1999"]


def squad_file(path: Path, answers: list[dict[str, object]]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    qas = [{"id": "q1", "question": "Who?", "answers": answers}]
    document = {"data": [{"title": "T", "paragraphs": [{"context": "C", "qas": qas}]}]}
    (path / "dev-v1.1.json").write_text(json.dumps(document), encoding="utf-8")
    return path


def test_a_question_without_answer_is_a_data_error(tmp_path: Path) -> None:
    folder = squad_file(tmp_path / "squad", [])
    with pytest.raises(TaskDataError, match=r"qas\[0\] \(id q1\): the question has no answer"):
        load_splits("squad", folder, seed=0)


def test_cli_squad_without_answer_exits_2_before_loading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = squad_file(tmp_path / "squad", [{"text": ""}])
    status = main(["train", "--task", "squad", "--data-dir", str(folder), "--model", "nowhere"])
    assert status == 2
    assert "no answer" in capsys.readouterr().err
