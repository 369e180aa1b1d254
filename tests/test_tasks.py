"""Tests for agzo.tasks: benchmark loaders on the real shared data, custom and generated
tasks, split sampling, error messages and metrics."""

from __future__ import annotations

import json
import re
import sys
import types
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from agzo.tasks import (
    CustomTask,
    Example,
    SplitSizes,
    TaskDataError,
    TaskSplits,
    accuracy,
    available_tasks,
    custom_task_from_spec,
    default_sizes,
    exact_match,
    f1_binary,
    get_task,
    load_splits,
    macro_f1,
    task_metric,
)
from agzo.tasks import vocabulary as vocab
from agzo.tasks.benchmarks import BenchmarkTask, examples_from_file
from agzo.tasks.records import read_records

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_data = pytest.mark.skipif(
    not DATA.is_dir(), reason=f"shared benchmark data not found at {DATA}"
)

BENCHMARKS = ["sst2", "sst2-mezo", "rte", "cb", "boolq", "copa", "wic", "wsc", "multirc"]
GENERATED = ["synthetic-sentiment", "synthetic-compare", "synthetic-category"]
CARVED = {"boolq", "copa", "wic", "wsc", "multirc"}

# Sizes with the default request (1000/500/1000, dev 100 for CB and COPA), as limited by
# the shared files: SST-2 dev has 872 rows, RTE val 277, CB train 250 -> 150/100 and val
# 56; COPA/WiC/WSC are carved from small validation files and shrink in proportion;
# MultiRC keeps a question's answers together, so test may fall a few answers short.
EXPECTED_SIZES = {
    "sst2": (1000, 500, 872),
    "sst2-mezo": (1000, 500, 872),
    "rte": (1000, 500, 277),
    "cb": (150, 100, 56),
    "boolq": (1000, 500, 1000),
    "copa": (62, 6, 62),
    "wic": (268, 134, 268),
    "wsc": (50, 25, 50),
}

_CACHE: dict[tuple[str, int], TaskSplits] = {}


def splits_for(name: str, seed: int = 0) -> TaskSplits:
    """Default-size splits from the shared data, loaded once per test session."""
    if (name, seed) not in _CACHE:
        _CACHE[(name, seed)] = load_splits(name, DATA, seed=seed)
    return _CACHE[(name, seed)]


def prompts(examples: list[Example]) -> list[str]:
    return [example.prompt for example in examples]


def first_record(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as handle:
        return dict(json.loads(handle.readline()))


def benchmark(name: str) -> BenchmarkTask:
    task = get_task(name)
    assert isinstance(task, BenchmarkTask)
    return task


def file_prompts(name: str, *files: str) -> set[str]:
    task = benchmark(name)
    folder = DATA / ("sst2" if name.startswith("sst2") else name)
    return {ex.prompt for f in files for ex in examples_from_file(task.convert, folder / f)}


# --- registry -----------------------------------------------------------------------


def test_registry_lists_all_tasks_and_rejects_unknown_names() -> None:
    assert available_tasks() == BENCHMARKS + ["squad", "drop"] + GENERATED
    assert get_task("RTE").name == "rte"
    with pytest.raises(ValueError, match=r"unknown task 'nope'; valid names: sst2, .*multirc"):
        get_task("nope")


def test_default_sizes_follow_mezo() -> None:
    assert default_sizes("sst2") == SplitSizes(1000, 500, 1000)
    assert default_sizes("cb") == SplitSizes(1000, 100, 1000)
    assert default_sizes("copa").dev == 100
    assert get_task("multirc").metric == "f1"
    assert get_task("cb").metric == "accuracy"


# --- benchmarks on the real files -----------------------------------------------------


@needs_data
@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_splits_sizes_overlap_and_labels(name: str) -> None:
    splits = splits_for(name)
    sizes = (len(splits.train), len(splits.dev), len(splits.test))
    if name == "multirc":
        assert sizes[:2] == (1000, 500) and 990 <= sizes[2] <= 1000
    else:
        assert sizes == EXPECTED_SIZES[name]

    # No example twice, within or across splits.
    all_prompts = prompts(splits.train) + prompts(splits.dev) + prompts(splits.test)
    assert len(all_prompts) == len(set(all_prompts))

    n_classes = len(splits.test[0].candidates)
    for split in (splits.train, splits.test):
        labels = Counter(example.label for example in split)
        assert set(labels) == set(range(n_classes)), f"{name}: classes missing: {labels}"
    for example in splits.train + splits.dev + splits.test:
        assert 0 <= example.label < len(example.candidates)
        assert all(c.startswith(" ") for c in example.candidates)

    # Test comes from the validation file; train/dev from the train file (or, for carved
    # tasks, from the rest of the validation file plus the 32-example file).
    is_sst2 = name.startswith("sst2")
    eval_file = "dev.tsv" if is_sst2 else "val.jsonl"
    assert set(prompts(splits.test)) <= file_prompts(name, eval_file)
    if name in CARVED:
        pool = file_prompts(name, "val.jsonl", "train32.jsonl")
        assert any("drawn from val.jsonl" in note for note in splits.notes)
    else:
        pool = file_prompts(name, "train.tsv" if is_sst2 else "train.jsonl")
        assert not any("drawn from" in note for note in splits.notes)
    assert set(prompts(splits.train)) | set(prompts(splits.dev)) <= pool


@needs_data
@pytest.mark.parametrize("name", [n for n in BENCHMARKS if n != "sst2-mezo"])
def test_benchmark_splits_are_deterministic_per_seed(name: str) -> None:
    again = load_splits(name, DATA, seed=0)
    assert again.train == splits_for(name).train
    assert again.test == splits_for(name).test
    other = splits_for(name, seed=1)
    assert prompts(other.train) != prompts(again.train)


@needs_data
def test_data_dir_may_be_the_task_folder_or_its_parent() -> None:
    direct = load_splits("cb", DATA / "cb", seed=0)
    assert direct.test == splits_for("cb").test


@needs_data
def test_sst2_templates() -> None:
    row = (DATA / "sst2" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1]
    sentence, label = row.split("\t")
    sentence = " ".join(sentence.split())
    [ex] = benchmark("sst2").convert(read_records(DATA / "sst2" / "dev.tsv")[0])
    assert ex.prompt == f"Review: {sentence}\nSentiment (positive or negative):"
    assert ex.candidates == (" negative", " positive") and ex.label == int(label)
    [mezo] = benchmark("sst2-mezo").convert(read_records(DATA / "sst2" / "dev.tsv")[0])
    assert mezo.prompt == f"{sentence} It was"
    assert mezo.candidates[mezo.label] == (" great" if label == "1" else " terrible")


@needs_data
@pytest.mark.parametrize("name", ["rte", "cb"])
def test_entailment_templates(name: str) -> None:
    records = read_records(DATA / name / "val.jsonl")
    words = {"entailment": " Yes", "not_entailment": " No", "contradiction": " No"}
    words["neutral"] = " Maybe"
    for record in records[:5]:
        [ex] = benchmark(name).convert(record)
        premise, hypothesis = str(record.data["premise"]), str(record.data["hypothesis"])
        assert ex.prompt.startswith(" ".join(premise.split()))
        assert f'Does this mean that "{" ".join(hypothesis.split())}" is true?' in ex.prompt
        assert ex.candidates[ex.label] == words[str(record.data["label"])]
    assert len(benchmark(name).convert(records[0])[0].candidates) == (3 if name == "cb" else 2)


@needs_data
def test_boolq_wic_wsc_templates_map_bool_labels() -> None:
    record = first_record(DATA / "boolq" / "val.jsonl")
    [ex] = benchmark("boolq").convert(read_records(DATA / "boolq" / "val.jsonl")[0])
    question = record["question"][0].upper() + record["question"][1:]
    assert ex.prompt.endswith(f"\nQuestion: {question}? Yes or No?")
    assert ex.prompt.startswith(" ".join(record["passage"].split())[:200])
    assert ex.candidates[ex.label] == (" Yes" if record["label"] else " No")

    record = first_record(DATA / "wic" / "val.jsonl")
    [ex] = benchmark("wic").convert(read_records(DATA / "wic" / "val.jsonl")[0])
    assert record["sentence1"] in ex.prompt and record["sentence2"] in ex.prompt
    assert f"Is the word '{record['word']}' used in the same way" in ex.prompt
    assert ex.candidates[ex.label] == (" Yes" if record["label"] else " No")

    record = first_record(DATA / "wsc" / "val.jsonl")
    [ex] = benchmark("wsc").convert(read_records(DATA / "wsc" / "val.jsonl")[0])
    target = record["target"]
    assert ex.prompt.startswith(" ".join(record["text"].split()))
    assert (
        f'does the pronoun "{target["span2_text"]}" refer to {target["span1_text"]}?' in ex.prompt
    )
    assert ex.candidates[ex.label] == (" Yes" if record["label"] else " No")


@needs_data
def test_copa_template_uses_choices_as_candidates() -> None:
    records = read_records(DATA / "copa" / "val.jsonl")
    for record in records[:10]:
        [ex] = benchmark("copa").convert(record)
        data = record.data
        connective = " because" if data["question"] == "cause" else " so"
        assert ex.prompt == str(data["premise"]).rstrip(".") + connective
        for candidate, choice in zip(ex.candidates, (data["choice1"], data["choice2"])):
            assert candidate[1:].lower() == str(choice).lower()  # leading space, same words
            assert candidate[1] == str(choice)[0].lower() or candidate.startswith(" I")
        assert ex.label == data["label"]


@needs_data
def test_multirc_template_groups_answers_by_question() -> None:
    record = read_records(DATA / "multirc" / "val.jsonl")[0]
    examples = benchmark("multirc").convert(record)
    passage = record.data["passage"]
    assert isinstance(passage, dict)
    answers = [a for q in passage["questions"] for a in q["answers"]]
    assert len(examples) == len(answers)
    first_q = passage["questions"][0]
    first = examples[: len(first_q["answers"])]
    assert {ex.group for ex in first} == {first[0].group}
    assert first[0].group != examples[len(first_q["answers"])].group
    for ex, answer in zip(first, first_q["answers"]):
        assert first_q["question"] in ex.prompt
        assert f"Candidate answer: {answer['text']}\nIs that the answer? Yes or No?" in ex.prompt
        assert ex.candidates[ex.label] == (" Yes" if answer["label"] == 1 else " No")


@needs_data
def test_multirc_questions_never_straddle_splits() -> None:
    splits = splits_for("multirc")
    groups = [{ex.group for ex in split} for split in (splits.train, splits.dev, splits.test)]
    assert None not in groups[0]
    assert not (groups[0] & groups[1]) and not (groups[0] & groups[2])
    assert not (groups[1] & groups[2])


# --- error messages -----------------------------------------------------------------


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def rte_rows(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        {"premise": f"Premise number {i}.", "hypothesis": f"Claim {i}.", "label": i % 2}
        for i in range(start, start + n)
    ]


def test_missing_directory_and_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(TaskDataError, match=r"rte: data directory .*nowhere does not exist"):
        load_splits("rte", tmp_path / "nowhere", seed=0)
    write_jsonl(tmp_path / "rte" / "train.jsonl", rte_rows(10))
    with pytest.raises(TaskDataError, match=r"expected one of train\.jsonl.*one of val\.jsonl"):
        load_splits("rte", tmp_path, seed=0)


def test_missing_field_names_field_file_and_line(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", rte_rows(10))
    rows = rte_rows(4, start=100)
    del rows[1]["hypothesis"]
    write_jsonl(tmp_path / "val.jsonl", rows)
    with pytest.raises(TaskDataError, match=r"missing field 'hypothesis' in .*val\.jsonl, line 2"):
        load_splits("rte", tmp_path, seed=0)


def test_bad_label_and_bad_json_are_reported(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", rte_rows(10))
    rows = rte_rows(3, start=100)
    rows[2]["label"] = "maybe"
    write_jsonl(tmp_path / "val.jsonl", rows)
    with pytest.raises(TaskDataError, match=r"line 3 has unexpected label 'maybe'"):
        load_splits("rte", tmp_path, seed=0)
    (tmp_path / "val.jsonl").write_text('{"premise": "a"}\n{oops\n', encoding="utf-8")
    with pytest.raises(TaskDataError, match=r"invalid JSON in .*val\.jsonl, line 2"):
        load_splits("rte", tmp_path, seed=0)


def test_multirc_nested_missing_field(tmp_path: Path) -> None:
    passage = {
        "text": "Some text.",
        "questions": [{"question": "Why?", "answers": [{"text": "x"}]}],
    }
    write_jsonl(tmp_path / "val.jsonl", [{"idx": 0, "passage": passage}])
    write_jsonl(tmp_path / "train32.jsonl", [{"idx": 1, "passage": passage}])
    with pytest.raises(
        TaskDataError, match=r"missing field 'passage\.questions\[0\]\.answers\[0\]\.label'"
    ):
        load_splits("multirc", tmp_path, seed=0)


def test_bad_sizes_and_empty_splits(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_train must be a positive integer, got 0"):
        load_splits("synthetic-compare", None, seed=0, n_train=0)
    with pytest.raises(ValueError, match="n_test must be a positive integer, got -5"):
        load_splits("synthetic-compare", None, seed=0, n_test=-5)
    write_jsonl(tmp_path / "train.jsonl", rte_rows(1))
    write_jsonl(tmp_path / "val.jsonl", rte_rows(3, start=10))
    with pytest.raises(TaskDataError, match=r"rte: the dev split is empty"):
        load_splits("rte", tmp_path, seed=0)
    (tmp_path / "val.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(TaskDataError, match=r"rte: val\.jsonl holds no examples"):
        load_splits("rte", tmp_path, seed=0)


def test_tsv_with_wrong_column_count(tmp_path: Path) -> None:
    (tmp_path / "train.tsv").write_text("sentence\tlabel\ngood\t1\nbad\t0\textra\n")
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\nfine\t1\n")
    with pytest.raises(TaskDataError, match=r"train\.tsv, line 3: expected 2 columns"):
        load_splits("sst2", tmp_path, seed=0)
    (tmp_path / "train.tsv").write_text("text\tlabel\ngood\t1\n")
    with pytest.raises(TaskDataError, match=r"missing field 'sentence' in .*train\.tsv, line 2"):
        load_splits("sst2", tmp_path, seed=0)


def test_hub_fallback_without_datasets_asks_for_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(TaskDataError, match=r"rte: .*'datasets' package.*--data-dir"):
        load_splits("rte", None, seed=0)


def test_hub_rows_are_converted_to_the_original_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    def wsc_rows(offset: int) -> list[dict[str, Any]]:
        return [
            {
                "text": f"Tom met Bob number {i} and he smiled.",
                "span1_index": 0,
                "span2_index": 6,
                "span1_text": "Tom",
                "span2_text": "he",
                "idx": i,
                "label": i % 2,
            }
            for i in range(offset, offset + 12)
        ]

    def multirc_rows(offset: int) -> list[dict[str, Any]]:
        return [
            {
                "paragraph": f"Paragraph {p}.",
                "question": f"Question {p}-{q}?",
                "answer": f"answer {a}",
                "idx": {"paragraph": p, "question": q, "answer": a},
                "label": int(a == q),
            }
            for p in range(offset, offset + 3)
            for q in range(2)
            for a in range(3)
        ]

    tables = {
        "wsc.fixed": {"train": wsc_rows(0), "validation": wsc_rows(100)},
        "multirc": {"train": multirc_rows(0), "validation": multirc_rows(100)},
    }
    fake = types.SimpleNamespace(load_dataset=lambda path, name: tables[name])
    monkeypatch.setitem(sys.modules, "datasets", fake)
    wsc = load_splits("wsc", None, seed=0, n_train=6, n_dev=2, n_test=4)
    assert (len(wsc.train), len(wsc.dev), len(wsc.test)) == (6, 2, 4)
    assert 'does the pronoun "he" refer to Tom?' in wsc.test[0].prompt
    multirc = load_splits("multirc", None, seed=0, n_train=9, n_dev=3, n_test=6)
    assert (len(multirc.train), len(multirc.dev), len(multirc.test)) == (9, 3, 6)
    assert len({ex.group for ex in multirc.test}) == 2  # whole questions of 3 answers


# --- custom tasks -------------------------------------------------------------------


def review_rows(n: int) -> list[dict[str, Any]]:
    return [
        {"text": f"review {i} was {'good' if i % 2 else 'bad'}", "label": "pos" if i % 2 else "neg"}
        for i in range(n)
    ]


def test_custom_task_from_single_jsonl(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "reviews.jsonl", review_rows(40))
    task = custom_task_from_spec(path, "Text: {text}\\nLabel:", labels="neg=negative,pos= positive")
    assert task.text_fields == ("text",)
    assert task.label_words == {"neg": " negative", "pos": " positive"}
    splits = load_splits(task, None, seed=3, n_train=20, n_dev=5, n_test=10)
    assert (len(splits.train), len(splits.dev), len(splits.test)) == (20, 5, 10)
    everything = splits.train + splits.dev + splits.test
    assert len(set(prompts(everything))) == 35
    ex = splits.test[0]
    assert re.fullmatch(r"Text: review \d+ was (good|bad)\nLabel:", ex.prompt)
    assert ex.candidates == (" negative", " positive")
    assert ex.label == (1 if "good" in ex.prompt else 0)
    assert load_splits(task, None, seed=3, n_train=20, n_dev=5, n_test=10) == splits
    assert any("all drawn from reviews.jsonl" in note for note in splits.notes)


def test_custom_task_from_csv_folder(tmp_path: Path) -> None:
    lines = ["sentence,label"] + [f'"line {i}, with a comma",{i % 2}' for i in range(30)]
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    test_lines = ["sentence,label"] + [f"held out {i},{i % 2}" for i in range(8)]
    (tmp_path / "test.csv").write_text("\n".join(test_lines) + "\n", encoding="utf-8")
    task = custom_task_from_spec(tmp_path, "Say: {sentence}\nMood:", labels="0=sad,1=happy")
    splits = load_splits(task, None, seed=0, n_train=10, n_dev=4, n_test=100)
    assert (len(splits.train), len(splits.dev), len(splits.test)) == (10, 4, 8)
    assert all(ex.prompt.startswith("Say: held out") for ex in splits.test)
    assert all(", with a comma" in ex.prompt for ex in splits.train + splits.dev)
    assert splits.test[0].candidates == (" sad", " happy")


def test_custom_task_with_three_files_and_bool_labels(tmp_path: Path) -> None:
    for split, n in (("train", 12), ("dev", 4), ("test", 6)):
        rows = [{"q": f"{split} question {i}", "answer": bool(i % 2)} for i in range(n)]
        write_jsonl(tmp_path / f"{split}.jsonl", rows)
    task = CustomTask(
        tmp_path, "Q: {q}\nA:", {"false": " No", "true": " Yes"}, label_field="answer"
    )
    splits = load_splits(task, None, seed=0)
    assert (len(splits.train), len(splits.dev), len(splits.test)) == (12, 4, 6)
    assert all("dev question" in ex.prompt for ex in splits.dev)


def test_custom_task_errors(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", review_rows(10) + [{"text": "x", "label": "meh"}])
    task = custom_task_from_spec(path, "{text}", labels="neg=negative,pos=positive")
    with pytest.raises(
        TaskDataError,
        match=r"label 'meh' in .*data\.jsonl, line 11.*not one of the --labels",
    ):
        load_splits(task, None, seed=0)
    task = custom_task_from_spec(path, "{sentence}", labels="neg=negative,pos=positive")
    with pytest.raises(TaskDataError, match=r"missing field 'sentence' in .*data\.jsonl, line 1"):
        load_splits(task, None, seed=0)
    with pytest.raises(ValueError, match="invalid placeholder"):
        custom_task_from_spec(path, "Text: {}", labels="a,b")
    with pytest.raises(ValueError, match="no {field} placeholder"):
        custom_task_from_spec(path, "Text only", labels="a,b")
    with pytest.raises(ValueError, match="at least two labels"):
        custom_task_from_spec(path, "{text}", labels="0=only")
    with pytest.raises(ValueError, match="bad label spec item"):
        custom_task_from_spec(path, "{text}", labels="0=,1=yes")
    missing = custom_task_from_spec(tmp_path / "absent.csv", "{text}", labels="a,b")
    with pytest.raises(TaskDataError, match=r"absent\.csv does not exist"):
        load_splits(missing, None, seed=0)
    odd = tmp_path / "data.txt"
    odd.write_text("hello\n")
    with pytest.raises(TaskDataError, match=r"unsupported extension '\.txt'"):
        load_splits(custom_task_from_spec(odd, "{text}", labels="a,b"), None, seed=0)
    folder = tmp_path / "folder"
    write_jsonl(folder / "train.jsonl", review_rows(4))
    (folder / "train.csv").write_text("text,label\n")
    with pytest.raises(TaskDataError, match=r"ambiguous files .*train\.jsonl, train\.csv"):
        load_splits(custom_task_from_spec(folder, "{text}", labels="neg,pos"), None, seed=0)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TaskDataError, match=r"no training file in .*empty: expected train\.jsonl"):
        load_splits(custom_task_from_spec(empty, "{text}", labels="neg,pos"), None, seed=0)


# --- generated tasks ----------------------------------------------------------------


@pytest.mark.parametrize("name", GENERATED)
def test_generated_tasks_are_deterministic_balanced_and_disjoint(name: str) -> None:
    splits = load_splits(name, None, seed=0)
    assert (len(splits.train), len(splits.dev), len(splits.test)) == (1000, 200, 200)
    for split in (splits.train, splits.dev, splits.test):
        counts = Counter(ex.label for ex in split)
        assert abs(counts[0] - counts[1]) <= 1
    everything = prompts(splits.train) + prompts(splits.dev) + prompts(splits.test)
    assert len(set(everything)) == len(everything)
    assert load_splits(name, None, seed=0) == splits
    other = load_splits(name, None, seed=1, n_train=10, n_dev=10, n_test=10)
    assert prompts(other.test) != prompts(splits.test)[:10]
    # The test split depends only on the seed and n_test.
    small = load_splits(name, None, seed=0, n_train=5, n_dev=5)
    assert small.test == splits.test
    assert splits.notes


def test_generated_labels_are_correct() -> None:
    for ex in load_splits("synthetic-compare", None, seed=2, n_train=200).train:
        a, b = map(int, re.findall(r"\d+", ex.prompt))
        assert ex.candidates[ex.label] == (" Yes" if a > b else " No")

    member = {item: bare for (_, bare), items in vocab.CATEGORIES.items() for item in items}
    names = {with_article: bare for with_article, bare in vocab.CATEGORIES}
    for ex in load_splits("synthetic-category", None, seed=2, n_train=200).train:
        question = ex.prompt.split("Question: ")[1]
        item = next(i for i in member if re.search(rf"\ban? {i}\b", question))
        asked = next(
            bare
            for phrase, bare in [*names.items(), *((f"kind of {b}", b) for b in names.values())]
            if question.removesuffix("?\nAnswer:").endswith(phrase)
        )
        assert ex.label == int(asked == member[item]), ex.prompt

    positive = {p for t in vocab.REVIEW_TOPICS for p in t.positive} | set(vocab.GENERIC_POSITIVE)
    negative = {p for t in vocab.REVIEW_TOPICS for p in t.negative} | set(vocab.GENERIC_NEGATIVE)
    for ex in load_splits("synthetic-sentiment", None, seed=2, n_train=200).train:
        own, opposite = (positive, negative) if ex.label == 1 else (negative, positive)
        assert any(p in ex.prompt for p in own)
        assert not any(p in ex.prompt for p in opposite), ex.prompt


# --- metrics ------------------------------------------------------------------------


def test_metrics_on_hand_computed_cases() -> None:
    preds, labels = [1, 0, 1, 1], [1, 1, 1, 0]
    assert accuracy(preds, labels) == 0.5
    assert f1_binary(preds, labels) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert f1_binary(preds, labels, positive=0) == 0.0
    # class 0: 2/3, class 1: 2/4, class 2: 0
    assert macro_f1([0, 1, 1, 1], [0, 0, 1, 2]) == pytest.approx((2 / 3 + 0.5 + 0) / 3)
    assert macro_f1([0, 0], [0, 0], num_classes=3) == pytest.approx(1 / 3)
    assert exact_match([1, 1, 0, 1, 0], [1, 1, 0, 0, 0], ["a", "a", "b", "b", "c"]) == 2 / 3
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        accuracy([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="zero examples"):
        accuracy([], [])


def test_task_metric_reports_each_tasks_metrics() -> None:
    yes_no = (" No", " Yes")
    examples = [
        Example("p1", yes_no, 1, group="q1"),
        Example("p2", yes_no, 0, group="q1"),
        Example("p3", yes_no, 1, group="q2"),
        Example("p4", yes_no, 0, group="q2"),
    ]
    result = task_metric("multirc", examples, [1, 0, 1, 1])
    assert result["accuracy"] == 0.75
    assert result["f1a"] == result["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1))
    assert result["em"] == 0.5
    cb_examples = [Example(f"p{i}", (" Yes", " No", " Maybe"), i % 3) for i in range(6)]
    cb = task_metric("cb", cb_examples, [0, 1, 2, 0, 1, 0])
    assert cb["accuracy"] == pytest.approx(5 / 6)
    # class 0: tp 2 fp 1 -> 0.8; class 1: 1.0; class 2: tp 1 fn 1 -> 2/3
    assert cb["macro_f1"] == pytest.approx((0.8 + 1.0 + 2 / 3) / 3)
    assert task_metric("sst2", examples, [1, 0, 1, 0]) == {"accuracy": 1.0}
