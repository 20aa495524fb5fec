"""The paper's experiment configs (configs/paper/*.yaml): they validate, follow the paper's conventions, and every
algorithm each one compares runs end to end on a tiny random model of the same architecture.

The tiny models (hidden size 16, one layer, two heads) are built with ``from_config`` and saved with
``save_pretrained``; the encoders reuse the packaged MiniLM WordPiece tokenizer, GPT-2 gets a small byte-level BPE
trained on the fly. Runs use 64 examples, two clients, one round of one local step. Pools that are not in the data
copy here are replaced by a stand-in of the same task kind (``STAND_INS``), and only when their files are missing.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from pathlib import Path

import pytest
import torch

from pf2lora import experiment
from pf2lora.algorithms import ALGORITHMS
from pf2lora.config import ConfigError, load_config
from pf2lora.data import DATASET_LAYOUT
from pf2lora.experiment import prepare, run_algorithm
from pf2lora.models import minilm_path

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "configs" / "paper"
CONFIGS = sorted(PAPER.glob("*.yaml"))
SHARED_DATA = ROOT.parent / "shared" / "data"
DATA = Path(os.environ.get("PF2LORA_DATA_DIR", SHARED_DATA))
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"no dataset copy at {DATA} (set PF2LORA_DATA_DIR)")

#: The pretrained model of every paper config and its ``model_type`` (a new model needs an entry here).
MODEL_TYPES = {
    "FacebookAI/roberta-base": "roberta",
    "FacebookAI/roberta-large": "roberta",
    "microsoft/deberta-v3-base": "deberta-v2",
    "openai-community/gpt2-medium": "gpt2",
    "openai-community/gpt2-xl": "gpt2",
}

#: Communication rounds per GLUE dataset (Section 6.1.1).
GLUE_ROUNDS = {"cola": 50, "mnli": 300, "sst2": 100, "qqp": 300, "qnli": 100}

#: (dataset, split) of a paper pool missing from the data copy here → a stand-in of the same task kind.
STAND_INS = {
    ("mnli", "train"): ("mnli_subset", "train"),  # full MNLI absent: the 20k MNLI train subset, same 3 labels
    ("qqp", "train"): ("qnli", "dev"),  # no QQP here at all: QNLI dev, another binary sentence-pair task
    ("qnli", "train"): ("qnli", "dev"),  # QNLI train absent: its complete dev set
    ("squad_v2", "train"): ("squad_v2", "train_first10titles"),  # SQuAD v2.0 train: only its first 10 titles
}

#: Smallest run of a config: 64 examples, 2 clients, 1 round of 1 step, tiny evaluation.
TINY = [
    "data.max_examples=64",
    "data.global_split=null",  # the shared held-out set is tested elsewhere
    "partition.num_clients=2",
    "federation.rounds=1",
    "federation.local_steps=1",
    "federation.batch_size=4",
    "federation.eval_every=1",
    "task.eval_batch_size=32",
    "task.eval_examples_per_client=2",
    "task.max_new_tokens=4",
    "task.num_beams=1",
]
#: Per architecture: QA windows need room for the question plus the stride; a generation row must keep reference
#: tokens after its prompt (else its loss has no target).
TINY_BY_TYPE = {
    "roberta": ["task.max_length=32"],
    "deberta-v2": ["task.max_length=64", "task.doc_stride=16", "task.n_best=5"],
    "gpt2": ["task.max_length=128"],
}

#: Small enough for a one-layer model, large enough for every HF config's own checks.
TINY_SIZE = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}


def _paper_s(path: Path) -> float | None:
    """The paper's similarity s written in the YAML comment on the ``iid_fraction`` line."""
    match = re.search(r"iid_fraction:.*#\s*paper s = ([0-9.]+)", path.read_text(encoding="utf-8"))
    return float(match.group(1)) if match else None


def _available(dataset: str, split: str) -> bool:
    layout = DATASET_LAYOUT[dataset]
    directory = DATA / layout.subdir
    return all(
        any(directory.glob(p)) if "*" in p else (directory / p).is_file() for p in layout.splits.get(split, ("?",))
    )


@pytest.fixture(scope="module", autouse=True)
def _fast_cpu():
    """One intra-op thread (the tiny models' ops are far slower with thread hand-offs) and each pool read once."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(experiment, "load_dataset", functools.cache(experiment.load_dataset))
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """A saved random model + tokenizer per ``model_type`` the paper configs use."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModel, AutoTokenizer, DebertaV2Config, GPT2Config, GPT2TokenizerFast, RobertaConfig

    root = tmp_path_factory.mktemp("tiny_models")
    wordpiece = AutoTokenizer.from_pretrained(minilm_path())
    encoder = {
        **TINY_SIZE,
        "vocab_size": len(wordpiece),
        "max_position_embeddings": 514,
        "pad_token_id": wordpiece.pad_token_id,
    }
    configs = {
        # type_vocab_size 2: the BERT tokenizer sends segment ids 0/1 for sentence pairs (real RoBERTa sends none)
        "roberta": RobertaConfig(**encoder, type_vocab_size=2),
        # DeBERTa-v3-base's attention: relative positions in 256 log buckets, c2p + p2c, no absolute positions
        "deberta-v2": DebertaV2Config(
            **encoder,
            type_vocab_size=0,
            relative_attention=True,
            position_buckets=256,
            max_relative_positions=-1,
            pos_att_type=["p2c", "c2p"],
            norm_rel_ebd="layer_norm",
            share_att_key=True,
            position_biased_input=False,
        ),
    }
    out = {}
    for model_type, config in configs.items():
        torch.manual_seed(0)
        out[model_type] = root / model_type
        AutoModel.from_config(config).save_pretrained(out[model_type])
        wordpiece.save_pretrained(out[model_type])

    # GPT-2: a byte-level BPE (GPT-2's scheme, no pad token) learned from MiniLM's English word pieces
    words = [w for w in (minilm_path() / "vocab.txt").read_text(encoding="utf-8").split() if w.isalpha()]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=4000,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([" ".join(words)], trainer=trainer)
    eos = "<|endoftext|>"
    gpt2_tok = GPT2TokenizerFast(tokenizer_object=bpe, bos_token=eos, eos_token=eos, unk_token=eos)
    gpt2 = GPT2Config(
        vocab_size=len(gpt2_tok),
        n_positions=1024,
        n_embd=16,
        n_layer=1,
        n_head=2,
        n_inner=32,
        bos_token_id=gpt2_tok.eos_token_id,
        eos_token_id=gpt2_tok.eos_token_id,
    )
    torch.manual_seed(0)
    out["gpt2"] = root / "gpt2"
    AutoModel.from_config(gpt2).save_pretrained(out["gpt2"])
    gpt2_tok.save_pretrained(out["gpt2"])
    return out


def test_paper_configs_exist_and_readme_lists_them():
    assert len(CONFIGS) >= 30
    readme = (PAPER / "README.md").read_text(encoding="utf-8")
    missing = [p.name for p in CONFIGS if p.name not in readme]
    assert not missing, f"configs/paper/README.md does not list {missing}"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_validates_and_follows_paper_conventions(path):
    cfg = load_config(path)
    assert cfg.name == path.stem
    assert Path(cfg.data.data_dir) == SHARED_DATA.resolve()
    assert cfg.model.name in MODEL_TYPES
    assert cfg.algorithm in cfg.compare and len(set(cfg.compare)) == len(cfg.compare)
    for name in cfg.compare:
        assert name in cfg.algorithms, f"no hyperparameters for {name}"
        ALGORITHMS[name].Config(**cfg.hyperparameters(name))
    assert cfg.federation.local_steps == 10 and cfg.federation.client_fraction == 1.0
    if cfg.partition.method == "label_sorted":
        s = _paper_s(path)
        assert s is not None, "write the paper's s as '# paper s = ...' on the iid_fraction line"
        assert cfg.partition.iid_fraction == pytest.approx(1.0 - s)
    if cfg.data.dataset in GLUE_ROUNDS:
        assert cfg.federation.rounds == GLUE_ROUNDS[cfg.data.dataset]
        assert (cfg.federation.batch_size, cfg.partition.num_clients) == (16, 8)
        assert (cfg.task.metric == "mcc") == (cfg.data.dataset == "cola")
    if path.stem.startswith("table5_"):  # baselines with more trainable parameters (Section 6.3)
        assert cfg.lora_for("homlora").r == cfg.lora_for("perfedavg").r == 12
        assert (cfg.lora_for("pf2lora").r, cfg.lora_for("pf2lora").r_private) == (8, 2)


@needs_data
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_runs_every_algorithm_on_a_tiny_model(path, tiny_models, tmp_path):
    base = load_config(path)
    model_type = MODEL_TYPES[base.model.name]
    dataset, split = base.data.dataset, base.data.split
    if not _available(dataset, split):
        dataset, split = STAND_INS[(dataset, split)]
    overrides = [
        f"model.name={tiny_models[model_type]}",
        f"data.data_dir={DATA}",
        f"data.dataset={dataset}",
        f"data.split={split}",
        *TINY,
        *TINY_BY_TYPE[model_type],
    ]
    cfg = load_config(path, overrides)
    prepared = prepare(cfg)
    assert len(prepared.clients) == 2
    for name in cfg.compare:
        out = tmp_path / name
        summary = run_algorithm(prepared, name, out)
        assert json.loads((out / "summary.json").read_text()) == summary, name
        assert summary["rounds"] == 1 and summary["metric"] == prepared.task.primary_metric, name
        assert summary["metric"] in summary["final"]["mean"], name
        assert (summary["private_parameters_per_client"] > 0) == ALGORITHMS[name].uses_private_adapter, name
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        losses = [r["train_loss"] for r in rows if r["kind"] == "train"]
        assert losses and all(math.isfinite(v) for v in losses), (name, losses)


@pytest.mark.parametrize(
    ("old", "new", "named"),
    [
        ("  rounds:", "  round:", "federation.round"),
        ("  iid_fraction:", "  iid_fractoin:", "partition.iid_fractoin"),
        ("hetlora: {lr:", "hetlora: {lr_max: 1, lr:", "algorithms.hetlora.lr_max"),
    ],
)
def test_typo_in_a_key_is_a_one_line_error_naming_it(tmp_path, old, new, named):
    text = (PAPER / "table5_roberta-base_cola.yaml").read_text(encoding="utf-8")
    assert old in text
    bad = tmp_path / "typo.yaml"
    bad.write_text(text.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    message = str(err.value)
    assert named in message and "\n" not in message


def test_typo_in_an_override_is_a_one_line_error_naming_it():
    with pytest.raises(ConfigError) as err:
        load_config(PAPER / "table1_roberta-base_sst2.yaml", ["federation.round=3"])
    assert "federation.round" in str(err.value) and "\n" not in str(err.value)


def test_typo_in_an_algorithm_lora_override_names_its_full_path():
    with pytest.raises(ConfigError) as err:
        load_config(PAPER / "table5_roberta-base_cola.yaml", ["algorithms.homlora.lora.rr=12"])
    assert "algorithms.homlora.lora.rr" in str(err.value)
