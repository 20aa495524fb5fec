"""Export one client's personalized model as a standard PEFT LoRA adapter (loadable without pf2lora).

A two-level layer computes ``base(x) + s·B(A x) + s̃·D(C x)`` with fixed scalings ``s = alpha/r`` and
``s̃ = alpha_private/r_private``. Stacking the factors,

    A' = [A; C]  (R×in),   B' = [s·B, s̃·D]  (out×R),   R = r_eff + r̃,

gives ``B'(A' x) = s·B(A x) + s̃·D(C x)`` as an identity of linear maps, so one PEFT LoRA of rank ``R``
with scaling ``lora_alpha/r = 1`` reproduces the client's model exactly (only the float rounding of
``s·B`` differs). ``r_eff`` is the number of rows of the client's ``A``: a HETLoRA client's truncated
factors keep the layer's scaling ``alpha/r_max``, which is folded into ``B'`` the same way, so PEFT
never rescales them by its own ``alpha/r``. Layers with different ``R`` get PEFT ``rank_pattern`` and
``alpha_pattern`` entries. Task-head parameters (and any other non-LoRA value in ``params``) are
stored as PEFT ``modules_to_save``.

The adapter is built by PEFT itself (``get_peft_model`` on a plain copy of the network, factors copied
in, ``save_pretrained``), so the files are exactly what PEFT writes and ``PeftModel.from_pretrained``
reads. Dropout is not exported (``lora_dropout = 0``): the adapter is for inference.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shutil
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from pf2lora.adapters import COMMON_SUFFIXES, PRIVATE_SUFFIXES, AdaptedModel, TwoLevelLoRALinear
from pf2lora.errors import OutputError

#: PEFT ``task_type`` per pf2lora model kind.
TASK_TYPES = {"classification": "SEQ_CLS", "qa": "QUESTION_ANS", "causal_lm": "CAUSAL_LM"}
ADAPTER_CONFIG = "adapter_config.json"
EXPORT_INFO = "pf2lora_export.json"
_LORA_SUFFIXES = COMMON_SUFFIXES + PRIVATE_SUFFIXES


def peft_task_type(kind: str) -> str:
    """PEFT's ``task_type`` for a pf2lora model kind (``classification``/``qa``/``causal_lm``)."""
    try:
        return TASK_TYPES[kind]
    except KeyError:
        raise ValueError(f"unknown model kind {kind!r}: expected one of {sorted(TASK_TYPES)}") from None


@dataclass(frozen=True)
class _Merged:
    """One layer's single-level factors and where they came from (recorded in ``pf2lora_export.json``)."""

    a: Tensor
    b: Tensor
    r: int
    r_private: int
    scaling: float
    scaling_private: float

    @property
    def rank(self) -> int:
        return self.a.shape[0]

    def info(self) -> dict[str, float | int]:
        return {
            "r": self.r,
            "r_private": self.r_private,
            "rank": self.rank,
            "scaling": self.scaling,
            "scaling_private": self.scaling_private,
        }


def _merge_layer(name: str, layer: TwoLevelLoRALinear, values: Mapping[str, Tensor]) -> _Merged:
    """``A' = [A; C]``, ``B' = [s·B, s̃·D]`` of one layer; factors absent from ``values`` are the layer's own."""

    def get(leaf: str) -> Tensor:
        return values.get(f"{name}.{leaf}", getattr(layer, leaf)).detach()

    a, b = get("lora_A"), get("lora_B")
    a_parts, b_parts = [a], [layer.scaling * b]
    r_private = 0
    if layer.r_private:
        c, d = get("lora_C"), get("lora_D")
        a_parts.append(c)
        b_parts.append(layer.scaling_private * d)
        r_private = c.shape[0]
    for a_i, b_i in zip(a_parts, b_parts, strict=True):
        if a_i.shape[1] != layer.in_features or b_i.shape[0] != layer.out_features or b_i.shape[1] != a_i.shape[0]:
            raise ValueError(
                f"{name}: factor shapes {tuple(a_i.shape)} / {tuple(b_i.shape)} do not fit a "
                f"{layer.in_features}->{layer.out_features} layer"
            )
    return _Merged(
        torch.cat(a_parts, 0),
        torch.cat(b_parts, 1),
        a.shape[0],
        r_private,
        layer.scaling,
        layer.scaling_private,
    )


def _head_values(model: AdaptedModel, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Every non-LoRA value to export: ``params``' own, then the model's current head values."""
    names = dict(model.net.named_parameters())
    out: dict[str, Tensor] = {}
    for n, v in params.items():
        owner, _, leaf = n.rpartition(".")
        if leaf in _LORA_SUFFIXES:
            if owner not in model.layers:
                raise ValueError(f"params has {n!r}, but {owner!r} is not an adapted layer")
            continue
        if n not in names:
            raise ValueError(f"params has {n!r}, which is not a parameter of the model")
        out[n] = v.detach()
    for n in model.head_names:
        out.setdefault(n, names[n].detach())
    return out


def _modules_to_save(net: nn.Module, head: Mapping[str, Tensor]) -> list[str]:
    """Smallest set of modules holding the head parameters: each owner, widened while its parent is all head.

    Widening matters because PEFT wraps modules one by one: wrapping both ``classifier`` (which PEFT adds
    itself for ``SEQ_CLS``) and its child ``classifier.dense`` would nest wrappers.
    """
    chosen: set[str] = set()
    for n in head:
        module = n.rpartition(".")[0]
        if not module:
            raise ValueError(f"{n!r} is not inside a submodule, so PEFT cannot save it as modules_to_save")
        while "." in module:
            parent = module.rpartition(".")[0]
            if not all(f"{parent}.{p}" in head for p, _ in net.get_submodule(parent).named_parameters()):
                break
            module = parent
        chosen.add(module)
    return sorted(chosen)


def _plain_copy(model: AdaptedModel, head: Mapping[str, Tensor]) -> nn.Module:
    """The network without pf2lora: each two-level layer replaced by its base module, ``head`` values written in.

    Frozen base tensors are shared with ``model.net`` rather than copied (a second copy of a large model
    is not needed); everything written to is a fresh copy.
    """
    memo: dict[int, object] = {
        id(p): p
        for n, p in model.net.named_parameters()
        if n not in head and n.rpartition(".")[2] not in _LORA_SUFFIXES
    }
    net = copy.deepcopy(model.net, memo)
    for name in model.layers:
        owner, _, leaf = name.rpartition(".")
        parent = net.get_submodule(owner)
        setattr(parent, leaf, getattr(parent, leaf).base)
    with torch.no_grad():
        for n, v in head.items():
            net.get_parameter(n).copy_(v)
    return net


@contextlib.contextmanager
def _requires_grad_kept(module: nn.Module) -> Iterator[None]:
    """Restore every parameter's ``requires_grad`` afterwards (PEFT freezes the tensors we share with it)."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _check_out_dir(out: Path) -> None:
    """Only a missing or empty directory, or an earlier export, may be (re)placed at ``out``."""
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir():
        raise OutputError(f"export directory {out} exists and is not a directory")
    if not (out / ADAPTER_CONFIG).is_file() and any(out.iterdir()):
        raise OutputError(f"export directory {out} is not empty and holds no earlier adapter export ({ADAPTER_CONFIG})")


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` to ``out``; an earlier export there is removed only once ``tmp`` is in place."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = out.parent / f".{out.name}.old-{uuid.uuid4().hex}"
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _write_adapter(
    model: AdaptedModel,
    merged: Mapping[str, _Merged],
    head: Mapping[str, Tensor],
    directory: Path,
    base_model_name_or_path: str,
    task_type: str,
) -> list[str]:
    """Build the PEFT model on a plain copy of the network, load the merged values, ``save_pretrained``.

    Returns the ``modules_to_save`` requested (PEFT adds ``classifier``/``score`` or ``qa_outputs`` itself
    for the sequence-classification and QA task types).
    """
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    ranks = {name: m.rank for name, m in merged.items()}
    r = Counter(ranks.values()).most_common(1)[0][0]
    # PEFT matches pattern keys as regexes against the end of a module name; escaped full names match one module.
    pattern = {re.escape(name): rank for name, rank in ranks.items() if rank != r}
    modules_to_save = _modules_to_save(model.net, head)
    config = LoraConfig(
        task_type=task_type,
        r=r,
        lora_alpha=r,
        rank_pattern=pattern,
        alpha_pattern=dict(pattern),
        lora_dropout=0.0,
        use_rslora=False,
        bias="none",
        # A list entry matches a module whose name equals it or ends with "." + it: full names match exactly.
        target_modules=sorted(merged),
        modules_to_save=list(modules_to_save) or None,
        fan_in_fan_out=any(layer.fan_in_fan_out for layer in model.layers.values()),
    )
    with _requires_grad_kept(model.net):
        peft_model = get_peft_model(_plain_copy(model, head), config)
    inner = peft_model.base_model.model
    lora_names = {n for n, m in inner.named_modules() if isinstance(m, LoraLayer)}
    if lora_names != set(merged):
        raise RuntimeError(f"PEFT adapted {sorted(lora_names)}, expected exactly {sorted(merged)}")
    with torch.no_grad():
        for name, m in merged.items():
            lora = inner.get_submodule(name)
            lora.lora_A["default"].weight.copy_(m.a)
            lora.lora_B["default"].weight.copy_(m.b)
    # get_peft_model overwrites the config's base_model_name_or_path with the module's own name_or_path.
    peft_model.peft_config["default"].base_model_name_or_path = base_model_name_or_path
    # "auto" would look the base model up on the Hub to see whether the vocabulary was resized; it never is here.
    peft_model.save_pretrained(str(directory), save_embedding_layers=False)
    return modules_to_save


def export_peft_adapter(
    model: AdaptedModel,
    params: Mapping[str, Tensor],
    out_dir: str | Path,
    *,
    base_model_name_or_path: str,
    task_type: str,
    client: int | str | None = None,
) -> Path:
    """Write a client's personalized model (``params`` on ``model``) as a PEFT LoRA adapter directory.

    ``out_dir`` receives ``adapter_config.json`` and ``adapter_model.safetensors`` such that
    ``PeftModel.from_pretrained(AutoModelFor…(base_model_name_or_path), out_dir)`` computes the same
    outputs as ``model.call(params, …)`` — no pf2lora needed to load it — plus an informational
    ``pf2lora_export.json`` (per-layer ranks and scalings, ``client``).

    ``params`` holds any of the adapter factors (HETLoRA's may be truncated to fewer rows/columns) and
    head values; whatever it lacks is taken from the model's current values, as ``model.call`` does.
    ``task_type`` is PEFT's (``SEQ_CLS``, ``QUESTION_ANS``, ``CAUSAL_LM``; see :func:`peft_task_type`).
    The directory appears atomically; an existing ``out_dir`` is replaced only if it is empty or an
    earlier export, else :class:`~pf2lora.errors.OutputError` is raised. Returns ``out_dir``.
    """
    if task_type not in TASK_TYPES.values():
        raise ValueError(f"unknown task_type {task_type!r}: expected one of {sorted(TASK_TYPES.values())}")
    if not model.layers:
        raise ValueError("the model has no two-level LoRA layers to export")
    out = Path(out_dir)
    _check_out_dir(out)
    merged = {name: _merge_layer(name, layer, params) for name, layer in model.layers.items()}
    head = _head_values(model, params)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f".{out.name}.{uuid.uuid4().hex}.tmp"
        tmp.mkdir()  # not mkdtemp: its 0700 mode would stay with the published directory
    except OSError as e:
        raise OutputError(f"cannot write export directory {out}: {e.strerror or e}") from e
    try:
        modules_to_save = _write_adapter(model, merged, head, tmp, base_model_name_or_path, task_type)
        info = {
            "client": client,
            "base_model_name_or_path": base_model_name_or_path,
            "task_type": task_type,
            "merge": "A' = [A; C], B' = [scaling*B, scaling_private*D], PEFT scaling 1",
            "layers": {name: m.info() for name, m in merged.items()},
            "modules_to_save": modules_to_save,
            "head_parameters": sorted(head),
        }
        (tmp / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n")
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
