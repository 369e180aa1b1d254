"""Weight-only int8 / 4-bit quantization libraries on CPU, measured on one model.

    OMP_NUM_THREADS=1 PYTHONPATH=src:/path/to/torchao \
        python benchmarks/quantization_libraries.py --lib torchao --model smollm2-135m \
        --output docs/results/quantization-libraries.jsonl

One library per process (each patches torch or transformers on import). For each bit width it
quantizes every nn.Linear of the decoder layers (embeddings and the output head stay float32,
as ZO-Act leaves them), then records: quantization time, state-dict bytes, how far the logits
move from float32 (max |Δ|, mean cosine per position, top-1 agreement), forward time against
float32 (batch x seq tokens, one thread, float and quantized timed alternately), whether a
forward hook on each quantized layer sees its input, and whether a float32 low-rank term
x Vᵀ Cᵀ can be added to each quantized layer's output by wrapping it. Appends one JSON line per
(library, bits) to --output.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from agzo.models import load_model
from agzo.testing import tiny_causal_lm

GROUP_SIZE = 64  # 4-bit groups; SmolLM2's 576 inputs are not a multiple of 128


def _linear_names(model: nn.Module) -> list[str]:
    """Fully qualified names of the decoder's nn.Linear modules (not the output head)."""
    head = model.get_output_embeddings()
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and m is not head]


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


# --------------------------------------------------------------------------- libraries


def quantize_torchao(model: nn.Module, bits: int, names: list[str]) -> None:
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    if bits == 8:
        config: Any = Int8WeightOnlyConfig()
    else:
        # The stable Int4WeightOnlyConfig needs CUDA kernels (mslk) or bfloat16 on CPU; the
        # prototype config packs for torch's own _weight_int4pack_mm_for_cpu kernel.
        from torchao.prototype.quantization.int4.inference_workflow import (
            PrototypeInt4WeightOnlyConfig,
        )

        config = PrototypeInt4WeightOnlyConfig(group_size=GROUP_SIZE)
    wanted = set(names)
    quantize_(model, config, filter_fn=lambda _m, fqn: fqn in wanted)


def quantize_quanto(model: nn.Module, bits: int, names: list[str]) -> None:
    from optimum.quanto import freeze, qint4, qint8, quantize

    # quanto picks the 4-bit group size itself: 128, or the largest multiple of 32 dividing
    # in_features (96 for SmolLM2's 576).
    quantize(model, weights=qint8 if bits == 8 else qint4, include=names)
    freeze(model)


def quantize_hqq(model: nn.Module, bits: int, names: list[str]) -> None:
    from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

    config = BaseQuantizeConfig(nbits=bits, group_size=GROUP_SIZE)
    for name in names:
        linear = model.get_submodule(name)
        quantized = HQQLinear(linear, config, compute_dtype=torch.float32, device="cpu")
        _set_module(model, name, quantized)


def quantize_bitsandbytes(model: nn.Module, bits: int, names: list[str]) -> None:
    import bitsandbytes as bnb

    for name in names:
        linear = model.get_submodule(name)
        has_bias = linear.bias is not None
        weight = linear.weight.data.clone()
        quantized: nn.Module
        if bits == 8:  # LLM.int8() with threshold 0: a pure int8 weight, per-row scales
            quantized = bnb.nn.Linear8bitLt(
                linear.in_features, linear.out_features, bias=has_bias, has_fp16_weights=False
            )
            quantized.weight = bnb.nn.Int8Params(weight, requires_grad=False)
        else:  # NF4, blocks of 64 (bitsandbytes' default)
            quantized = bnb.nn.Linear4bit(
                linear.in_features, linear.out_features, bias=has_bias,
                compute_dtype=torch.float32, quant_type="nf4",
            )  # fmt: skip
            quantized.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4")
        if has_bias:
            quantized.bias = nn.Parameter(linear.bias.data.clone(), requires_grad=False)
        _set_module(model, name, quantized.to("cpu"))  # .to() is where bitsandbytes quantizes


LIBRARIES: dict[str, Callable[[nn.Module, int, list[str]], None]] = {
    "torchao": quantize_torchao,
    "quanto": quantize_quanto,
    "hqq": quantize_hqq,
    "bitsandbytes": quantize_bitsandbytes,
}


# --------------------------------------------------------------------------- measurements


def _tensor_bytes(tensor: Tensor, seen: set[int]) -> int:
    """Bytes of a tensor's storage, looking inside tensor subclasses (torchao, quanto)."""
    flatten = getattr(tensor, "__tensor_flatten__", None)
    if flatten is not None:
        inner_names, _ = flatten()
        return sum(_tensor_bytes(getattr(tensor, n), seen) for n in inner_names)
    storage = tensor.untyped_storage()
    if storage.data_ptr() in seen:  # tied weights count once
        return 0
    seen.add(storage.data_ptr())
    return storage.nbytes()


def state_bytes(model: nn.Module) -> int:
    seen: set[int] = set()
    return sum(_tensor_bytes(t, seen) for t in model.state_dict().values())


def logits_drift(reference: Tensor, logits: Tensor) -> dict[str, float]:
    ref, out = reference.flatten(0, -2).double(), logits.flatten(0, -2).double()
    return {
        "max_abs_diff": float((out - ref).abs().max()),
        "reference_max_abs": float(ref.abs().max()),
        "mean_cosine": float(nn.functional.cosine_similarity(out, ref, dim=-1).mean()),
        "top1_agreement": float((out.argmax(-1) == ref.argmax(-1)).double().mean()),
    }


def forward_seconds(
    reference: nn.Module, quantized: nn.Module, ids: Tensor, repeats: int
) -> tuple[float, float]:
    """Median forward seconds of each model, timed alternately so that drift hits both."""
    times: dict[str, list[float]] = {"reference": [], "quantized": []}
    with torch.no_grad():
        for repeat in range(repeats + 1):
            for key, model in (("reference", reference), ("quantized", quantized)):
                start = time.perf_counter()
                model(input_ids=ids)
                if repeat > 0:  # the first round warms both up
                    times[key].append(time.perf_counter() - start)
    return statistics.median(times["reference"]), statistics.median(times["quantized"])


def hooks_see_inputs(
    reference: nn.Module, quantized: nn.Module, names: list[str], ids: Tensor
) -> dict[str, Any]:
    """Do forward hooks on the quantized layers fire, with their float32 inputs?

    The first linear's input is computed before any quantized weight is used, so it must be
    bit-identical to the float model's.
    """
    seen: dict[str, Tensor] = {}

    def hook_for(name: str) -> Any:
        def hook(_m: nn.Module, args: tuple[Any, ...], _out: Any) -> None:
            seen[name] = args[0]

        return hook

    handles = [quantized.get_submodule(n).register_forward_hook(hook_for(n)) for n in names]
    with torch.no_grad():
        quantized(input_ids=ids)
    for handle in handles:
        handle.remove()
    first_input: dict[str, Tensor] = {}
    handle = reference.get_submodule(names[0]).register_forward_hook(
        lambda _m, args, _o: first_input.setdefault("x", args[0])
    )
    with torch.no_grad():
        reference(input_ids=ids)
    handle.remove()
    inputs = list(seen.values())
    return {
        "hooked_layers": len(seen),
        "quantized_layers": len(names),
        "inputs_float32": all(x.dtype == torch.float32 for x in inputs),
        "first_input_identical": bool(torch.equal(seen[names[0]], first_input["x"])),
    }


class LowRankDelta(nn.Module):
    """base(x) + x Vᵀ Cᵀ: ZO-Act's trainable float32 term beside a frozen quantized layer."""

    def __init__(self, base: nn.Module, in_features: int, out_features: int, rank: int) -> None:
        super().__init__()
        self.base = base
        self.basis = nn.Parameter(torch.randn(rank, in_features), requires_grad=False)
        self.coefficients = nn.Parameter(torch.zeros(out_features, rank))

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + (x @ self.basis.T) @ self.coefficients.T


def additive_term_works(
    quantized: nn.Module, names: list[str], shapes: dict[str, tuple[int, int]], ids: Tensor
) -> dict[str, Any]:
    """Wrap every quantized layer; C = 0 must leave the logits alone, C ≠ 0 must move them by
    exactly the term (checked on the first layer's output)."""
    with torch.no_grad():
        before = quantized(input_ids=ids).logits
    wrappers = []
    for name in names:
        in_features, out_features = shapes[name]
        wrapper = LowRankDelta(quantized.get_submodule(name), in_features, out_features, 1)
        _set_module(quantized, name, wrapper)
        wrappers.append(wrapper)
    with torch.no_grad():
        unchanged = bool(torch.equal(quantized(input_ids=ids).logits, before))
        for wrapper in wrappers:
            wrapper.coefficients.normal_(std=1e-3)
        captured: dict[str, Any] = {}
        handle = wrappers[0].register_forward_hook(
            lambda _m, args, out: captured.update(x=args[0], out=out)
        )
        moved = float((quantized(input_ids=ids).logits - before).abs().max())
        handle.remove()
        first, x = wrappers[0], captured["x"]
        expected = first.base(x) + (x @ first.basis.T) @ first.coefficients.T
    return {
        "zero_term_leaves_logits": unchanged,
        "nonzero_term_moves_logits": moved,
        "term_exact_on_first_layer": bool(torch.allclose(captured["out"], expected)),
        "output_plain_float32": type(captured["out"]) is Tensor
        and captured["out"].dtype == torch.float32,
    }


# --------------------------------------------------------------------------- driver


def _token_block(tokenizer: Any, text_file: str | None, batch: int, seq: int) -> Tensor:
    """batch x seq real-text token ids (random ids without a text file)."""
    if text_file is None:
        generator = torch.Generator().manual_seed(0)
        return torch.randint(5, tokenizer.vocab_size, (batch, seq), generator=generator)
    lines = Path(text_file).read_text().splitlines()[1:]
    text = " ".join(line.split("\t")[0] for line in lines[: 4 * batch * seq])
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][: batch * seq]
    return torch.tensor(ids).view(batch, seq)


def measure(
    lib: str, model_name: str, bits: int, ids: Tensor, reference: nn.Module, repeats: int
) -> dict[str, Any]:
    row: dict[str, Any] = {"library": lib, "model": model_name, "bits": bits}
    names = _linear_names(reference)
    shapes = {n: (reference.get_submodule(n).in_features, reference.get_submodule(n).out_features)
              for n in names}  # fmt: skip
    model = copy.deepcopy(reference)
    try:
        start = time.perf_counter()
        LIBRARIES[lib](model, bits, names)
        row["quantize_seconds"] = time.perf_counter() - start
        row["module_type"] = type(model.get_submodule(names[0])).__name__
        row["weight_type"] = type(getattr(model.get_submodule(names[0]), "weight", None)).__name__
        row["state_bytes"] = state_bytes(model)
        row["float32_state_bytes"] = state_bytes(reference)
        with torch.no_grad():
            row |= logits_drift(reference(input_ids=ids).logits, model(input_ids=ids).logits)
        float_s, quant_s = forward_seconds(reference, model, ids, repeats)
        row |= {"float32_forward_s": float_s, "forward_s": quant_s, "time_ratio": quant_s / float_s}
        row |= hooks_see_inputs(reference, model, names, ids)
        row |= additive_term_works(model, names, shapes, ids)
    except Exception as error:  # a failure is a finding: record it and go on
        row["error"] = f"{type(error).__name__}: {error}"
        row["traceback"] = traceback.format_exc(limit=4)
    return row


def markdown_table(path: str) -> str:
    """The rows of a JSON-lines file written by this script, as a Markdown table."""
    lines = [
        "| library | model | bits | MB (float32 MB) | logits max abs diff | mean cosine "
        "| top-1 agree | time / float32 | hook sees input | + x Vᵀ Cᵀ works |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for line in Path(path).read_text().splitlines():
        r = json.loads(line)
        if "error" in r:
            lines.append(f"| {r['library']} | {r['model']} | {r['bits']} | failed: {r['error']} |")
            continue
        hooked = r["hooked_layers"] == r["quantized_layers"] and r["first_input_identical"]
        term = r["zero_term_leaves_logits"] and r["term_exact_on_first_layer"]
        lines.append(
            f"| {r['library']} | {r['model']} | {r['bits']} | {r['state_bytes'] / 1e6:.1f} "
            f"({r['float32_state_bytes'] / 1e6:.1f}) | {r['max_abs_diff']:.3g} "
            f"(of {r['reference_max_abs']:.3g}) | {r['mean_cosine']:.4f} "
            f"| {r['top1_agreement']:.3f} | {r['time_ratio']:.2f} "
            f"| {'yes' if hooked else 'no'} | {'yes' if term else 'no'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lib", choices=list(LIBRARIES))
    parser.add_argument("--model", default="tiny", help="'tiny' (random Llama) or a model spec")
    parser.add_argument("--bits", default="8,4")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--text", default=None, help="TSV whose first column gives the tokens")
    parser.add_argument("--output", default="quantization-libraries.jsonl")
    parser.add_argument("--table", default=None, help="print a JSON-lines file as Markdown")
    args = parser.parse_args()
    if args.table:
        print(markdown_table(args.table))
        return
    if args.lib is None:
        parser.error("--lib is required (or --table to print results)")
    torch.set_num_threads(1)
    if args.model == "tiny":
        from agzo.testing import tiny_tokenizer

        # hidden 128 / intermediate 256: multiples of the 4-bit group size.
        reference: nn.Module = tiny_causal_lm("llama", hidden_size=128, intermediate_size=256)
        tokenizer: Any = tiny_tokenizer()
    else:
        reference, tokenizer = load_model(args.model)
    ids = _token_block(tokenizer, args.text, args.batch, args.seq)
    with Path(args.output).open("a") as out:
        for bits in (int(b) for b in args.bits.split(",")):
            row = measure(args.lib, args.model, bits, ids, reference, args.repeats)
            print(json.dumps({k: v for k, v in row.items() if k != "traceback"}), flush=True)
            out.write(json.dumps(row) + "\n")
            out.flush()  # a later, slower bit width may not finish


if __name__ == "__main__":
    main()
