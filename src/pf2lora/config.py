"""Experiment configuration: YAML validated by pydantic, with ``--set key=value`` overrides.

Every input problem is a one-line ``ConfigError`` naming the field (or the file and line): unknown or
duplicate keys, non-string keys, values of the wrong type (no coercion: ``true`` or ``"3"`` is not a
number, ``5`` is not a string), NaN and ±inf anywhere, sizes no run could mean. Paths in a config
(``data.data_dir``) are relative to the config file, so configs run from any working directory.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pf2lora.algorithms import ALGORITHMS
from pf2lora.errors import ConfigError
from pf2lora.federation import FederationConfig

__all__ = ["ConfigError", "ExperimentConfig", "dump_config", "find_non_finite", "load_config", "parse_config"]

#: Datasets whose task cuts contexts into ``task.max_length`` windows overlapping by ``task.doc_stride``.
_QA_DATASETS = ("squad_v1", "squad_v2")
#: Upper bound of every length in tokens (2**20: beyond any model's context), so absurd values fail here.
_MAX_TOKENS = 2**20
#: Upper bound of adapter ranks (the hidden size of the largest models the paper uses is 1600).
_MAX_RANK = 4096

_NonEmptyStr = Annotated[str, Field(min_length=1)]


class _Strict(BaseModel):
    """Unknown keys are errors; values are never coerced (an int still counts as a float); NaN/inf are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class ModelSettings(_Strict):
    """Which pretrained model; ``name`` is ``minilm``, ``smollm2-135m``, a HF model id or a local path."""

    name: _NonEmptyStr = "minilm"
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention"] | None = (
        None
    )
    """Attention kernel (default: the model's; eager where an algorithm takes exact second derivatives)."""
    head_modules: list[_NonEmptyStr] | None = Field(None, min_length=1)
    """Modules trained in full beside the adapters, by qualified name (unset: the task head, e.g. BERT's
    ``classifier``); e.g. ``[bert.pooler, classifier]`` gives BERT the dense + output head RoBERTa's has."""


class DataSettings(_Strict):
    """Which dataset and split form the pool that is partitioned into clients."""

    dataset: Literal["cola", "sst2", "qnli", "mnli", "mnli_subset", "qqp", "squad_v1", "squad_v2", "e2e", "webnlg"] = (
        "sst2"
    )
    data_dir: _NonEmptyStr = "../shared/data"
    """Folder with the official files, or ``hf://`` for the HF hub. ``load_config`` expands ``~`` and resolves a
    relative path, this default included, against the folder of the config file (not the working directory)."""
    split: _NonEmptyStr = "train"
    """Kept as free text: the data loader names the splits a dataset has."""
    max_examples: int | None = Field(None, ge=1, le=100_000_000)
    """Random subsample of the pool (before partitioning), for CPU-sized runs; at most 10**8 (far above any pool)
    and at least two per client (a train and a test example each)."""
    global_split: _NonEmptyStr | None = "auto"
    """The shared held-out set every client's model is also scored on (``global_*`` metrics), so that learning the
    task can be told from learning a client's label prior: a split of the dataset (e.g. ``dev``), ``pool`` (held
    out of the pool before subsampling and partitioning), ``auto`` (``dev`` where the dataset has one and the pool
    is another split, else ``pool``) or null (none)."""
    global_examples: int = Field(500, ge=1, le=100_000_000)
    """Size of the shared held-out set: label-balanced for classification (equal counts per label), a random
    sample otherwise; the same set for every seed. Generation scores at most ``task.eval_examples_per_client``."""


class PartitionSettings(_Strict):
    """How the pool becomes clients, and each client's local train/test split."""

    method: Literal["label_sorted", "dirichlet", "group", "iid"] = "label_sorted"
    num_clients: int = Field(8, ge=1, le=100_000)
    """1 to 100000 clients (each needs a train and a test example, see ``data.max_examples``)."""
    iid_fraction: float = Field(0.1, ge=0.0, le=1.0)
    """label_sorted: share of each client's data drawn iid; the rest comes label-sorted (paper s=0.9 → 0.1)."""
    dirichlet_alpha: float = Field(0.5, gt=0.0)
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)


class LoraSettings(_Strict):
    """Two-level LoRA shape; per-algorithm overrides go under ``algorithms.<name>.lora``."""

    r: int = Field(8, ge=1, le=_MAX_RANK)
    """Rank of the common adapter, 1 to 4096."""
    r_private: int = Field(2, ge=0, le=_MAX_RANK)
    """Rank of the private adapter, 0 (none) to 4096."""
    alpha: float | None = Field(16.0, gt=0.0)
    """Scaling numerator of the common adapter (scaling alpha/r; unset: 1); 0 would switch the adapter off."""
    alpha_private: float | None = Field(None, gt=0.0)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[_NonEmptyStr] | None = Field(None, min_length=1)
    """Names of the Linear modules to adapt (unset: the model's defaults); non-empty when given."""
    head_group: Literal["common", "private"] = "common"


class TaskSettings(_Strict):
    """Tokenization and evaluation settings (those a task does not use are ignored)."""

    max_length: int = Field(128, ge=8, le=_MAX_TOKENS)
    """Tokens per example (QA: per window), 8 to 2**20."""
    eval_batch_size: int = Field(64, ge=1, le=65_536)
    metric: Literal["accuracy", "mcc"] = "accuracy"
    doc_stride: int = Field(64, ge=1, le=_MAX_TOKENS)
    """QA: overlap of consecutive windows in tokens; must be below ``max_length``."""
    max_answer_length: int = Field(30, ge=1, le=_MAX_TOKENS)
    n_best: int = Field(20, ge=1, le=10_000)
    version_2_with_negative: bool = False
    prompt: str = "{source}\nText:"
    num_beams: int = Field(4, ge=1, le=1_024)
    max_new_tokens: int = Field(64, ge=1, le=_MAX_TOKENS)
    eval_examples_per_client: int = Field(0, ge=0, le=100_000_000)
    """Generation: evaluate at most this many test sources per client (0: all)."""


class PrivacySettings(_Strict):
    """Central differential privacy with client-side clipping (Flower's ``fixedclipping_mod`` on the nodes): each
    client's update of the communicated adapter is clipped to ``clipping_norm`` before it leaves the node, and the
    server adds Gaussian noise of std ``noise_multiplier`` × ``clipping_norm`` / (clients in the round) to the mean."""

    noise_multiplier: float = Field(gt=0.0, le=1e6)
    clipping_norm: float = Field(gt=0.0, le=1e12)
    target_delta: float = Field(1e-5, gt=0.0, lt=1.0)
    """δ at which the cumulative ε is reported (Flower's RDP accountant)."""


class SecAggSettings(_Strict):
    """Secure aggregation (Flower's SecAgg+): the server learns only the weighted mean of the round's uploads.

    Each value of an upload is stochastically rounded to one of ``quantization_range`` levels over
    [-``clipping_range``, ``clipping_range``] (a value outside that range is an error on the node, never clipped),
    masked, and summed modulo 2**32; shares of each client's keys go to ``num_shares`` neighbours, of which
    ``reconstruction_threshold`` recover the masks of a client that drops out mid-round."""

    num_shares: int | float = 1.0
    """Neighbours holding shares of a client's keys: a count (≥ 3), or a fraction (0, 1] of the round's clients."""
    reconstruction_threshold: int | float = 0.67
    """Shares that recover a dropped client's mask: a count (≥ 2, < num_shares), or a fraction (0, 1] of them."""
    clipping_range: float = Field(8.0, gt=0.0, le=1e6)
    quantization_range: int = Field(2**22, ge=2, le=2**31)
    """Levels per value: the quantization error of the mean is below 2·clipping_range/quantization_range; the
    round's clients × quantization_range must stay within 2**32 (SecAgg+'s modulus)."""

    @model_validator(mode="after")
    def _check_shares(self) -> SecAggSettings:
        """SecAgg+'s own constraints on shares and threshold, checked before any process starts."""
        shares, threshold = self.num_shares, self.reconstruction_threshold
        if isinstance(shares, int) and shares < 3:
            raise ValueError(f"num_shares: a count must be at least 3, got {shares}")
        if isinstance(shares, float) and not 0 < shares <= 1:
            raise ValueError(f"num_shares: a fraction must be in (0, 1], got {shares}")
        if isinstance(threshold, int) and (threshold < 2 or (isinstance(shares, int) and threshold >= shares)):
            raise ValueError(
                f"reconstruction_threshold: a count must be at least 2 and below num_shares, got {threshold}"
            )
        if isinstance(threshold, float) and not 0 < threshold <= 1:
            raise ValueError(f"reconstruction_threshold: a fraction must be in (0, 1], got {threshold}")
        return self


class FlowerSettings(_Strict):
    """How the Flower runtimes (``--runtime flower`` / ``flower-sim``) run rounds; the in-process runtime ignores it."""

    min_clients: int = Field(1, ge=1, le=100_000)
    """Fewest sampled clients whose updates make a round; a round with fewer replies (nodes down) stops the run,
    its last checkpoint kept for ``--resume``. Clients that do not reply are left out of that round's mean (the
    aggregation weights renormalise over those that did)."""
    round_timeout: float = Field(600.0, gt=0.0, le=86_400.0)
    """Seconds the server waits for a round's replies before going on without the missing ones."""
    join_timeout: float = Field(300.0, gt=0.0, le=86_400.0)
    """Seconds the server waits at the start for a node of every client (partition) to connect."""
    dp: PrivacySettings | None = None
    """Central differential privacy (unset: none); needs an algorithm whose aggregation is the weighted mean and
    ``federation.aggregation: uniform``."""
    secagg: SecAggSettings | None = None
    """Secure aggregation with SecAgg+ (unset: none); needs an algorithm whose aggregation is the weighted mean."""

    @model_validator(mode="after")
    def _one_privacy_option(self) -> FlowerSettings:
        if self.dp is not None and self.secagg is not None:
            raise ValueError("secagg: not supported together with flower.dp yet; choose one")
        return self


class ExperimentConfig(_Strict):
    """One experiment: model, data, partition, federation, adapters, and hyperparameters per algorithm."""

    name: str = "experiment"
    seed: int = Field(0, ge=0, lt=2**63)
    """Seed of sampling, partitioning and initialisation: 0 to 2**63 - 1 (numpy's SeedSequence refuses negatives)."""
    algorithm: str = "pf2lora"
    compare: list[str] = Field(default_factory=lambda: ["pf2lora", "homlora", "hetlora"])
    """Algorithms to run one after the other: at least one, each once."""
    model: ModelSettings = ModelSettings()
    data: DataSettings = DataSettings()
    partition: PartitionSettings = PartitionSettings()
    federation: FederationConfig = FederationConfig()
    lora: LoraSettings = LoraSettings()
    task: TaskSettings = TaskSettings()
    flower: FlowerSettings = FlowerSettings()
    algorithms: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _one_seed(cls, data: Any) -> Any:
        """The run has one seed, the top-level ``seed``: ``federation.seed`` follows it (or must equal it)."""
        if not isinstance(data, dict) or not isinstance(data.get("federation", {}), dict):
            return data
        seed = data.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool):
            return data  # field validation names the problem
        federation = dict(data.get("federation") or {})
        if federation.get("seed", seed) != seed:
            raise ValueError(f"federation.seed: differs from seed ({seed}); set only the top-level seed")
        return {**data, "federation": {**federation, "seed": seed}}

    @field_validator("compare")
    @classmethod
    def _check_compare(cls, names: list[str]) -> list[str]:
        """An empty comparison runs nothing, and a repeated name would overwrite its own output folder."""
        if not names:
            raise ValueError("must name at least one algorithm")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"names {', '.join(map(repr, repeated))} more than once")
        return names

    @model_validator(mode="after")
    def _check_sizes(self) -> ExperimentConfig:
        """Settings that are only wrong together: QA windows, and enough examples for every client."""
        task, data, clients = self.task, self.data, self.partition.num_clients
        if data.dataset in _QA_DATASETS and task.doc_stride >= task.max_length:
            raise ValueError(
                f"task.doc_stride: must be less than task.max_length ({task.max_length}) for {data.dataset} "
                f"windows, got {task.doc_stride}"
            )
        secagg = self.flower.secagg
        if secagg is not None and clients * secagg.quantization_range > 2**32:
            raise ValueError(
                f"flower.secagg.quantization_range: {clients} clients × {secagg.quantization_range} levels overflow "
                f"SecAgg+'s modulus 2**32; use at most {2**32 // clients}"
            )
        if data.max_examples is not None and data.max_examples < 2 * clients:
            raise ValueError(
                f"data.max_examples: must be at least 2 × partition.num_clients = {2 * clients} "
                f"(a train and a test example per client), got {data.max_examples}"
            )
        return self

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
                where = ".".join(map(str, (name, *err["loc"])))
                raise ValueError(f"algorithms.{where}: {_message(err)}") from None
            if "lora" in params:
                try:
                    LoraSettings(**{**self.lora.model_dump(), **params["lora"]})
                except (ValidationError, TypeError) as e:
                    detail = e.errors()[0] if isinstance(e, ValidationError) else {"loc": (), "msg": str(e), "type": ""}
                    where = ".".join(map(str, detail["loc"]))
                    raise ValueError(f"algorithms.{name}.lora.{where}: {_message(detail)}") from None
        for name in dict.fromkeys([self.algorithm, *self.compare]):
            algo = ALGORITHMS[name]
            algo.check_setup(
                algo.Config(**self.hyperparameters(name)), self.lora_for(name).model_dump(), self.partition.num_clients
            )
        return self

    def hyperparameters(self, name: str) -> dict[str, Any]:
        """Algorithm hyperparameters for ``name`` (its ``lora`` override removed)."""
        return {k: v for k, v in self.algorithms.get(name, {}).items() if k != "lora"}

    def lora_for(self, name: str) -> LoraSettings:
        """The LoRA shape algorithm ``name`` trains: the experiment's, its override, then the algorithm's own rule."""
        lora = {**self.lora.model_dump(), **self.algorithms.get(name, {}).get("lora", {})}
        algo = ALGORITHMS[name]
        return LoraSettings(**algo.lora_shape(algo.Config(**self.hyperparameters(name)), lora))


#: What a value had to be, by the type of pydantic's (strict) error.
_EXPECTED = {
    "int_type": "an integer",
    "float_type": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
}


_KINDS = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a mapping"}


def _kind(value: Any) -> str:
    """What a YAML value is, in words ("a boolean", "a list", ...)."""
    if value is None:
        return "null"
    return _KINDS.get(type(value), type(value).__name__)


def _message(err: Any) -> str:
    """A pydantic error's message in our words: what the value must be and, where short, what it was."""
    kind, value = err["type"], err.get("input")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind in _EXPECTED:
        return f"must be {_EXPECTED[kind]}, not {_kind(value)}"
    if kind == "finite_number":
        return "must be a finite number"
    if kind in ("too_short", "string_too_short"):
        return "must not be empty"
    msg = str(err["msg"]).removeprefix("Value error, ")
    if msg.startswith("Input should be "):
        msg = "must be " + msg.removeprefix("Input should be ")
        if isinstance(value, int | float | str) and len(repr(value)) <= 40:
            msg += f", got {value!r}"
    return msg


def find_non_finite(value: Any, where: str = "") -> str | None:
    """Dotted location (under ``where``) of the first NaN or ±inf in nested dicts and lists, or None if none."""
    if isinstance(value, float) and not math.isfinite(value):
        return where
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list | tuple) else ()
    for key, item in items:
        found = find_non_finite(item, f"{where}.{key}" if where else str(key))
        if found is not None:
            return found
    return None


class _KeyProblem(yaml.MarkedYAMLError):
    """A mapping key the config format refuses (duplicate, or not a string)."""


class _Loader(yaml.SafeLoader):
    """YAML's safe loader, refusing duplicate keys (plain YAML keeps the last one silently), non-string keys,
    and aliases that refer to themselves or multiply beyond reason (recursive or exponential structures)."""

    MAX_ALIASES = 1000

    def compose_node(self, parent: Any, index: Any) -> Any:
        if not hasattr(self, "_open_anchors"):
            self._open_anchors: set[str] = set()
            self._aliases = 0
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            self._aliases += 1
            if event.anchor in self._open_anchors or self._aliases > self.MAX_ALIASES:
                why = "refers to itself" if event.anchor in self._open_anchors else "is one alias too many"
                raise _KeyProblem(problem=f"alias *{event.anchor} {why}", problem_mark=event.start_mark)
            return super().compose_node(parent, index)
        anchor = getattr(event, "anchor", None)
        if anchor:
            self._open_anchors.add(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._open_anchors.discard(anchor)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[str, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # ``<<: *anchor`` entries may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                raise _KeyProblem(problem=f"key {key!r} is not a string", problem_mark=key_node.start_mark)
            if key in seen:
                problem = f"duplicate key {key!r} (first on line {seen[key]})"
                raise _KeyProblem(problem=problem, problem_mark=key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


# YAML 1.1 (PyYAML) reads ``1e-3`` and ``1e300`` as strings; YAML 1.2 and every user read them as numbers.
_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _yaml_error(e: yaml.YAMLError, with_line: bool) -> str:
    """One line for a YAML error: ``line N: <problem>`` (the line where known and wanted)."""
    if isinstance(e, yaml.MarkedYAMLError) and e.problem:
        problem = " ".join(e.problem.split())
        mark = e.problem_mark
    else:
        problem, mark = str(e).splitlines()[0], None
    what = problem if isinstance(e, _KeyProblem) else f"not valid YAML ({problem})"
    return f"line {mark.line + 1}: {what}" if with_line and mark is not None else what


def _set(tree: dict[str, Any], item: str) -> None:
    """Apply one ``--set key=value`` to the raw tree; the value is YAML (``compare=[pf2lora]``, ``lr=1e-3``)."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    dotted, raw = item.split("=", 1)
    keys = [k.strip() for k in dotted.split(".")]
    if not all(keys):
        raise ConfigError(f"--set {item}: the key must be dotted names like federation.rounds, got {dotted!r}")
    try:
        value = yaml.load(raw, Loader=_Loader) if raw != "" else ""  # _Loader is a SafeLoader
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item}: {_yaml_error(e, with_line=False)}") from None
    node = tree
    for depth, key in enumerate(keys[:-1], start=1):
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {item}: {'.'.join(keys[:depth])} is not a section")
    node[keys[-1]] = value


def _fail(path: Path, loc: str, msg: str, overrides: list[str]) -> ConfigError:
    """``<file>: <field>: <message>``, naming the last ``--set`` that wrote the field (or a section holding it)."""
    origin = ""
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if loc == key or loc.startswith(key + "."):
            origin = f" (from --set {item})"
    return ConfigError(f"{path}: {loc}: {msg}{origin}" if loc else f"{path}: {msg}")


def _resolve_data_dir(tree: dict[str, Any], folder: Path) -> None:
    """Expand ``~`` in ``data.data_dir`` and resolve it (or its default) against ``folder`` if relative."""
    data = tree.get("data", {})
    if not isinstance(data, dict):
        return  # validation names the problem
    data_dir = data.get("data_dir", DataSettings.model_fields["data_dir"].default)
    if isinstance(data_dir, str) and data_dir and "://" not in data_dir:
        resolved = Path(data_dir).expanduser()
        tree["data"] = {**data, "data_dir": str(resolved if resolved.is_absolute() else (folder / resolved).resolve())}


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read, override and validate a YAML config (UTF-8; empty: all defaults); relative paths are file-relative."""
    path, overrides = Path(path), list(overrides or [])
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    try:
        tree = yaml.load(raw.decode("utf-8"), Loader=_Loader)  # _Loader is a SafeLoader
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line}: not UTF-8 text (byte 0x{raw[e.start]:02x})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: {_yaml_error(e, with_line=True)}") from None
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (data:, lora:, ...), not {_kind(tree)}")
    _resolve_data_dir(tree, path.parent)
    for item in overrides:
        _set(tree, item)
    bad = find_non_finite(tree)
    if bad is not None:
        raise _fail(path, bad, "must be a finite number", overrides)
    _resolve_data_dir(tree, Path.cwd())  # a relative ``--set data.data_dir`` means the folder the command runs in
    try:
        # strict here too: FederationConfig is declared elsewhere and would otherwise coerce ``true`` to 1
        return ExperimentConfig.model_validate(tree, strict=True)
    except ValidationError as e:
        err = e.errors()[0]
        loc, msg = ".".join(map(str, err["loc"])), _message(err)
        if not loc:  # a model validator's message starts with the field it is about
            head, sep, rest = msg.partition(": ")
            if sep and re.fullmatch(r"[\w.]+", head):
                loc, msg = head.rstrip("."), rest
        raise _fail(path, loc, msg, overrides) from None


def parse_config(text: str) -> ExperimentConfig:
    """A resolved config (:func:`dump_config`'s YAML, as a Flower server sends it to its nodes)."""
    try:
        return ExperimentConfig.model_validate(yaml.safe_load(text), strict=True)
    except (ValidationError, yaml.YAMLError) as e:
        raise ConfigError(f"received config: {' '.join(str(e).split())[:300]}") from None


def dump_config(cfg: ExperimentConfig) -> str:
    """The fully resolved config as YAML (every default spelled out)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
