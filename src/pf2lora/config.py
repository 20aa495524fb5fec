"""Experiment configuration: YAML validated by pydantic, with ``--set key=value`` overrides.

Unknown keys and bad values are one-line errors naming the field (``ConfigError``). Paths in a config
(``data.data_dir``) are relative to the config file, so configs run from any working directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from pf2lora.algorithms import ALGORITHMS
from pf2lora.runtime.simulation import FederationConfig


class ConfigError(ValueError):
    """A config problem, stated in one line that names the field or file."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSettings(_Strict):
    """Which pretrained model; ``name`` is ``minilm``, ``smollm2-135m``, a HF model id or a local path."""

    name: str = "minilm"
    attn_implementation: str | None = None


class DataSettings(_Strict):
    """Which dataset and split form the pool that is partitioned into clients."""

    dataset: Literal["cola", "sst2", "qnli", "mnli", "mnli_subset", "qqp", "squad_v1", "squad_v2", "e2e", "webnlg"] = (
        "sst2"
    )
    data_dir: str = "../shared/data"
    """Folder with the official files (relative to the config file), or ``hf://`` for the HF hub."""
    split: str = "train"
    max_examples: PositiveInt | None = None
    """Random subsample of the pool (before partitioning), for CPU-sized runs."""


class PartitionSettings(_Strict):
    """How the pool becomes clients, and each client's local train/test split."""

    method: Literal["label_sorted", "dirichlet", "group", "iid"] = "label_sorted"
    num_clients: PositiveInt = 8
    iid_fraction: float = Field(0.1, ge=0.0, le=1.0)
    """label_sorted: share of each client's data drawn iid; the rest comes label-sorted (paper s=0.9 → 0.1)."""
    dirichlet_alpha: float = Field(0.5, gt=0.0)
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)


class LoraSettings(_Strict):
    """Two-level LoRA shape; per-algorithm overrides go under ``algorithms.<name>.lora``."""

    r: PositiveInt = 8
    r_private: int = Field(2, ge=0)
    alpha: float | None = 16.0
    alpha_private: float | None = None
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | None = None
    head_group: Literal["common", "private"] = "common"


class TaskSettings(_Strict):
    """Tokenization and evaluation settings (those a task does not use are ignored)."""

    max_length: PositiveInt = 128
    eval_batch_size: PositiveInt = 64
    metric: Literal["accuracy", "mcc"] = "accuracy"
    doc_stride: PositiveInt = 64
    max_answer_length: PositiveInt = 30
    n_best: PositiveInt = 20
    version_2_with_negative: bool = False
    prompt: str = "{source}\nText:"
    num_beams: PositiveInt = 4
    max_new_tokens: PositiveInt = 64
    eval_examples_per_client: int = Field(0, ge=0)
    """Generation: evaluate at most this many test sources per client (0: all)."""


class ExperimentConfig(_Strict):
    """One experiment: model, data, partition, federation, adapters, and hyperparameters per algorithm."""

    name: str = "experiment"
    seed: int = 0
    algorithm: str = "pf2lora"
    compare: list[str] = Field(default_factory=lambda: ["pf2lora", "homlora", "hetlora"])
    model: ModelSettings = ModelSettings()
    data: DataSettings = DataSettings()
    partition: PartitionSettings = PartitionSettings()
    federation: FederationConfig = FederationConfig()
    lora: LoraSettings = LoraSettings()
    task: TaskSettings = TaskSettings()
    algorithms: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> ExperimentConfig:
        for name in [self.algorithm, *self.compare, *self.algorithms]:
            if name not in ALGORITHMS:
                raise ValueError(f"unknown algorithm {name!r}; choose from {', '.join(ALGORITHMS)}")
        for name, params in self.algorithms.items():
            hyper = {k: v for k, v in params.items() if k != "lora"}
            try:
                ALGORITHMS[name].Config(**hyper)
            except ValidationError as e:
                err = e.errors()[0]
                raise ValueError(f"algorithms.{name}.{'.'.join(map(str, err['loc']))}: {_message(err)}") from None
            if "lora" in params:
                try:
                    LoraSettings(**{**self.lora.model_dump(), **params["lora"]})
                except (ValidationError, TypeError) as e:
                    detail = e.errors()[0] if isinstance(e, ValidationError) else {"loc": (), "msg": str(e), "type": ""}
                    where = ".".join(map(str, detail["loc"]))
                    raise ValueError(f"algorithms.{name}.lora.{where}: {_message(detail)}") from None
        return self

    def hyperparameters(self, name: str) -> dict[str, Any]:
        """Algorithm hyperparameters for ``name`` (its ``lora`` override removed)."""
        return {k: v for k, v in self.algorithms.get(name, {}).items() if k != "lora"}

    def lora_for(self, name: str) -> LoraSettings:
        """The LoRA shape ``name`` trains: its override, r = r_max for HETLoRA, no private adapter for baselines."""
        lora = LoraSettings(**{**self.lora.model_dump(), **self.algorithms.get(name, {}).get("lora", {})})
        algo = ALGORITHMS[name]
        updates: dict[str, Any] = {}
        if not algo.uses_private_adapter:
            updates["r_private"] = 0
        if name == "hetlora":
            updates["r"] = algo.Config(**self.hyperparameters(name)).r_max  # type: ignore[attr-defined]
        return lora.model_copy(update=updates)


def _message(err: Any) -> str:
    """A pydantic error's message in our words."""
    return "unknown key" if err["type"] == "extra_forbidden" else str(err["msg"]).removeprefix("Value error, ")


def _set(tree: dict[str, Any], dotted: str, raw: str) -> None:
    value = yaml.safe_load(raw) if raw != "" else ""
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        if not isinstance(node.setdefault(k, {}), dict):
            raise ConfigError(f"--set {dotted}: {k} is not a section")
        node = node[k]
    node[keys[-1]] = value


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read, override and validate a YAML config; relative ``data.data_dir`` resolves against its folder."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        _set(tree, key.strip(), raw)
    data_dir = tree.get("data", {}).get("data_dir") if isinstance(tree.get("data"), dict) else None
    if data_dir and "://" not in data_dir and not os.path.isabs(os.path.expanduser(data_dir)):
        tree["data"]["data_dir"] = str((path.parent / data_dir).resolve())
    try:
        return ExperimentConfig(**tree)
    except ValidationError as e:
        err = e.errors()[0]
        msg = _message(err)
        loc = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"{path}: {loc}: {msg}" if loc else f"{path}: {msg}") from None


def dump_config(cfg: ExperimentConfig) -> str:
    """The fully resolved config as YAML (every default spelled out)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
