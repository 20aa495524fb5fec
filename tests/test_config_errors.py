"""Config input errors: each is a one-line ``ConfigError`` naming the field (or file and line); valid configs
that lean on YAML conveniences (ints for floats, ``~``, relative paths) still load."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from pydantic import ValidationError

from pf2lora.config import ConfigError, find_non_finite, load_config
from pf2lora.errors import InputError
from pf2lora.synthetic import SyntheticConfig

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT / "configs" / "mini" / "sst2.yaml"
SQUAD = ROOT / "configs" / "mini" / "squad.yaml"


def _error(path: Path, overrides: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(path, overrides)
    message = str(err.value)
    assert "\n" not in message, message
    return message


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        # --set syntax
        (["compare=[pf2lora,homlora"], "--set compare=[pf2lora,homlora: not valid YAML ("),
        (["federation..rounds=3"], "federation..rounds"),
        (["=3"], "--set =3"),
        ([".a=1"], "'.a'"),
        (["seed.x=1"], "seed is not a section"),
        (["algorithms.pf2lora={1: 2}"], "key 1 is not a string"),
        (["algorithms.pf2lora={lr: 1, lr: 2}"], "duplicate key 'lr'"),
        # compare
        (["compare=[]"], "compare: must name at least one algorithm"),
        (["compare=[pf2lora, homlora, pf2lora]"], "compare: names 'pf2lora' more than once"),
        # no coercion
        (["data.data_dir=5"], "data.data_dir: must be a string, not an integer"),
        (["federation.rounds=true"], "federation.rounds: must be an integer, not a boolean"),
        (["federation={rounds: true}"], "federation.rounds: must be an integer, not a boolean"),
        (["lora.r=false"], "lora.r: must be an integer, not a boolean"),
        (["partition.iid_fraction=true"], "partition.iid_fraction: must be a number, not a boolean"),
        (["federation.rounds='3'"], "federation.rounds: must be an integer, not a string"),
        (["task.version_2_with_negative=1"], "task.version_2_with_negative: must be true or false"),
        # NaN and ±inf anywhere
        (["lora.alpha=.nan"], "lora.alpha: must be a finite number"),
        (["lora.alpha=.inf"], "lora.alpha: must be a finite number"),
        (["lora.alpha=-.inf"], "lora.alpha: must be a finite number"),
        (["federation.client_fraction=.nan"], "federation.client_fraction: must be a finite number"),
        (["algorithms.pf2lora.lr=.nan"], "algorithms.pf2lora.lr: must be a finite number"),
        (["algorithms.hetlora.ranks=[2, .inf]"], "algorithms.hetlora.ranks.1: must be a finite number"),
        # secure aggregation
        (["flower.secagg={num_shares: 2}"], "flower.secagg: num_shares: a count must be at least 3, got 2"),
        (["flower.secagg={reconstruction_threshold: 1.5}"], "reconstruction_threshold: a fraction must be in (0, 1]"),
        (["flower.secagg={}", "flower.dp={noise_multiplier: 1.0, clipping_norm: 1.0}"], "not supported together"),
        (
            ["flower.secagg={quantization_range: 2147483648}", "partition.num_clients=3"],
            "flower.secagg.quantization_range: 3 clients",
        ),
        # seeds
        (["seed=-1"], "seed: must be greater than or equal to 0"),
        ([f"seed={2**63}"], "seed: must be less than"),
        # sizes
        (["lora.r=1000000000000000000000000000000"], "lora.r: must be less than or equal to 4096"),
        (["lora.r_private=5000"], "lora.r_private: must be less than or equal to 4096"),
        (["partition.num_clients=1000000"], "partition.num_clients: must be less than or equal to 100000"),
        (["partition.num_clients=0"], "partition.num_clients: must be greater than or equal to 1"),
        (["data.max_examples=1000000000"], "data.max_examples: must be less than or equal to"),
        (["federation.rounds=10000000"], "federation.rounds: must be less than or equal to"),
        (["task.max_length=4"], "task.max_length: must be greater than or equal to 8"),
        (["lora.alpha=0"], "lora.alpha: must be greater than 0"),
        # cross-field
        (["data.max_examples=15", "partition.num_clients=8"], "data.max_examples: must be at least 2 × partition"),
        # target modules
        (["lora.target_modules=[]"], "lora.target_modules: must not be empty"),
        (["lora.target_modules=[query, '']"], "lora.target_modules.1: must not be empty"),
        (["lora.target_modules=query"], "lora.target_modules: must be a list"),
        # literals still named
        (["data.dataset=sst3"], "data.dataset: must be 'cola'"),
    ],
)
def test_bad_override_is_a_one_line_error_naming_the_field(overrides, named):
    message = _error(SST2, overrides)
    assert named in message
    assert isinstance(ConfigError(message), InputError)


def test_error_from_a_set_names_the_set_item():
    assert _error(SST2, ["federation.rounds=true"]).endswith("(from --set federation.rounds=true)")


def test_doc_stride_must_be_below_max_length_for_qa():
    message = _error(SQUAD, ["task.max_length=64", "task.doc_stride=64"])
    assert "task.doc_stride" in message and "task.max_length" in message


@pytest.mark.parametrize(
    ("content", "named"),
    [
        (b"name: caf\xe9\n", "line 1: not UTF-8 text"),
        (b"seed: 0\n1: 2\n", "line 2: key 1 is not a string"),
        (b"federation:\n  rounds: 3\n  2: x\n", "line 3: key 2 is not a string"),
        (b"[]\n", "the top level must be a mapping"),
        (b"3\n", "the top level must be a mapping"),
        (b"federation:\n  rounds: 3\nseed: 1\nfederation:\n  rounds: 4\n", "line 4: duplicate key 'federation'"),
        (b"federation:\n  rounds: 3\n  rounds: 4\n", "line 3: duplicate key 'rounds' (first on line 2)"),
        (b"federation: {rounds: [1, 2}\n", "line 1: not valid YAML"),
        (b"lora: {alpha: .nan}\n", "lora.alpha: must be a finite number"),
    ],
)
def test_bad_file_is_a_one_line_error_naming_file_and_line(tmp_path, content, named):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    message = _error(path)
    assert message.startswith(f"{path}: ") and named in message


def test_empty_file_means_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing set\n", encoding="utf-8")
    cfg = load_config(path)
    assert cfg.federation.rounds == 10 and cfg.data.dataset == "sst2"


def test_ints_stand_for_floats_and_bools_for_bool_fields():
    cfg = load_config(
        SQUAD,
        [
            "lora.alpha=16",
            "partition.iid_fraction=1",
            "algorithms.pf2lora.lr=1",
            "federation.client_fraction=1",
            "task.version_2_with_negative=true",
        ],
    )
    assert cfg.lora.alpha == 16.0 and isinstance(cfg.lora.alpha, float)
    assert cfg.partition.iid_fraction == 1.0 and cfg.task.version_2_with_negative is True


def test_tilde_in_data_dir_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    path = tmp_path / "c.yaml"
    path.write_text("data: {data_dir: ~/data}\n", encoding="utf-8")
    assert load_config(path).data.data_dir == str(tmp_path / "data")
    assert load_config(SST2, ["data.data_dir=~/other"]).data.data_dir == str(tmp_path / "other")


def test_relative_and_default_data_dir_resolve_against_the_config_folder(tmp_path, monkeypatch):
    folder = tmp_path / "configs"
    folder.mkdir()
    monkeypatch.chdir(ROOT)  # not the config's folder
    (folder / "set.yaml").write_text("data: {data_dir: data}\n", encoding="utf-8")
    (folder / "unset.yaml").write_text("seed: 1\n", encoding="utf-8")
    assert load_config(folder / "set.yaml").data.data_dir == str((folder / "data").resolve())
    assert load_config(folder / "unset.yaml").data.data_dir == str((tmp_path / "shared" / "data").resolve())
    assert load_config(folder / "unset.yaml", ["data.data_dir=hf://"]).data.data_dir == "hf://"


def test_repo_configs_resolve_to_the_shared_data_copy():
    for path in sorted((ROOT / "configs").glob("*/*.yaml")):
        assert Path(load_config(path).data.data_dir) == (ROOT.parent / "shared" / "data").resolve(), path


def test_find_non_finite_names_the_first_location():
    assert find_non_finite({"a": [1, 2.0, {"b": math.inf}]}) == "a.2.b"
    assert find_non_finite({"a": [1, 2.0], "b": True}) is None


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"pf2lora": {"lr": math.nan, "lr_private": 1e-2}}, "pf2lora"),
        ({"hetlora": {"ranks": [2, -math.inf]}}, "hetlora"),
        ({"rank_threshold": math.inf}, "rank_threshold"),
        ({"seed": -1}, "seed"),
    ],
)
def test_synthetic_config_refuses_non_finite_values(settings, field):
    with pytest.raises(ValidationError) as err:
        SyntheticConfig(**settings)
    assert err.value.errors()[0]["loc"] == (field,)
