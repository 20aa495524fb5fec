"""Dataset loaders on the real files (row counts from PROVENANCE.md) and client partitioners."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pf2lora.data import (
    DirichletLabelPartitioner,
    GroupPartitioner,
    LabelSortedPartitioner,
    Partition,
    TextExample,
    dirichlet_split,
    group_split,
    held_out_sample,
    iid_fraction_from_paper_s,
    label_sorted_split,
    load_dataset,
    train_test_split_per_client,
)

DATA_DIR = Path(os.environ.get("PF2LORA_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
needs_data = pytest.mark.skipif(not DATA_DIR.is_dir(), reason=f"no dataset copy at {DATA_DIR} (set PF2LORA_DATA_DIR)")


# ---------------------------------------------------------------- loaders on the real files


@needs_data
@pytest.mark.parametrize(
    ("name", "split", "rows"),
    [
        ("cola", "train", 8551),
        ("cola", "dev", 527 + 516),
        ("sst2", "dev", 872),
        ("qnli", "dev", 5463),
        ("mnli_subset", "train", 20000),
        ("mnli_subset", "dev", 5000),
        ("squad_v1", "dev", 10570),
        ("squad_v2", "dev", 11873),
        ("squad_v2", "train_first10titles", 4719),
        ("webnlg", "train", 6940),
        ("webnlg", "dev", 872),
        ("webnlg", "test", 1862),
    ],
)
def test_loader_row_counts(name: str, split: str, rows: int) -> None:
    assert len(load_dataset(name, split, DATA_DIR)) == rows


@needs_data
def test_glue_labels() -> None:
    cola = load_dataset("cola", "train", DATA_DIR)
    assert cola[0] == TextExample("Our friends won't buy this analysis, let alone the next one we propose.", None, 1)
    assert {x.label for x in cola} == {0, 1}
    qnli = load_dataset("qnli", "dev", DATA_DIR)
    assert qnli[0].label == 0 and qnli[1].label == 1 and qnli[0].text_b is not None
    mnli = Counter(x.label for x in load_dataset("mnli_subset", "train", DATA_DIR))
    assert mnli == {0: 6709, 1: 6646, 2: 6645}  # entailment, neutral, contradiction


@needs_data
def test_squad_titles_and_impossible() -> None:
    v1 = load_dataset("squad_v1", "dev", DATA_DIR)
    assert len({x.title for x in v1}) == 48 and not any(x.is_impossible for x in v1)
    x = v1[0]
    assert x.context[x.answer_starts[0] :].startswith(x.answers[0])
    v2 = load_dataset("squad_v2", "dev", DATA_DIR)
    impossible = [x for x in v2 if x.is_impossible]
    assert len({x.title for x in v2}) == 35 and len(impossible) == 5945
    assert all(x.answers == [] for x in impossible)


@needs_data
@pytest.mark.parametrize(("split", "rows"), [("train", 42061), ("dev", 4672), ("test", 4693)])
def test_e2e_groups_refs_by_mr(split: str, rows: int) -> None:
    examples = load_dataset("e2e", split, DATA_DIR)
    assert sum(len(x.references) for x in examples) == rows
    assert len({x.source for x in examples}) == len(examples)
    assert all(f"name[{x.group}]" in x.source for x in examples)


@needs_data
def test_webnlg_source_and_groups() -> None:
    test = load_dataset("webnlg", "test", DATA_DIR)
    assert test[0].source == "Abilene_Regional_Airport | cityServed | Abilene,_Texas"
    assert len(test[0].references) == 2 and test[0].group == "Airport"
    assert len({x.group for x in load_dataset("webnlg", "dev", DATA_DIR)}) == 10
    assert len({x.group for x in test}) == 15
    assert any(" ; " in x.source for x in test)


def test_missing_file_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("sst2", "train", tmp_path)
    msg = str(err.value)
    assert (
        msg
        == f"sst2: train.tsv not found in {tmp_path / 'glue' / 'SST-2'} (set data_dir to a copy of the official files)"
    )
    with pytest.raises(FileNotFoundError, match=r"webnlg: train/\[1-7\]triples/\*\.xml not found"):
        load_dataset("webnlg", "train", tmp_path)
    with pytest.raises(ValueError, match="unknown split"):
        load_dataset("sst2", "test", tmp_path)


def test_official_glue_layouts_absent_here(tmp_path: Path) -> None:
    """MNLI, QNLI train and QQP are not in the shared copy: check their official layouts on tiny files."""
    mnli = tmp_path / "glue" / "MNLI"
    mnli.mkdir(parents=True)
    header = "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
    header += "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label\n"
    row = '0\t1\t1e\tgov\t( a )\t( b )\t(S a)\t(S b)\tA "quoted" premise.\tA hypothesis.\tneutral\tneutral\n'
    (mnli / "train.tsv").write_text(header + row + row.replace("neutral", "contradiction"))
    assert load_dataset("mnli", "train", tmp_path) == [
        TextExample('A "quoted" premise.', "A hypothesis.", 1),
        TextExample('A "quoted" premise.', "A hypothesis.", 2),
    ]
    qnli = tmp_path / "glue" / "QNLI"
    qnli.mkdir()
    (qnli / "train.tsv").write_text("index\tquestion\tsentence\tlabel\n0\tQ?\tS.\tnot_entailment\n")
    assert load_dataset("qnli", "train", tmp_path) == [TextExample("Q?", "S.", 1)]
    qqp = tmp_path / "glue" / "QQP"
    qqp.mkdir()
    (qqp / "dev.tsv").write_text(
        "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n1\t2\t3\tQ1?\tQ2?\t1\n4\t5\t6\tcut\n"
    )
    assert load_dataset("qqp", "dev", tmp_path) == [TextExample("Q1?", "Q2?", 1)]


# ---------------------------------------------------------------- partitioners


def _labels(n_per_label: int = 100, num_labels: int = 4) -> list[int]:
    return np.random.default_rng(123).permutation(np.repeat(np.arange(num_labels), n_per_label)).tolist()


def _majority(partition: Partition) -> float:
    """Mean over clients of the share of the client's most frequent label (1 = one label per client)."""
    return float(np.mean([max(h.values()) / sum(h.values()) for h in partition.label_histograms()]))


def _assert_covers(partition: Partition, n: int) -> None:
    flat = [i for client in partition.clients for i in client]
    assert sorted(flat) == list(range(n))


@pytest.mark.parametrize(
    "split",
    [
        lambda y, seed: label_sorted_split(y, 4, 0.3, seed),
        lambda y, seed: dirichlet_split(y, 5, 0.5, seed),
        lambda y, seed: group_split([f"g{i % 13}" for i in range(len(y))], 4, seed),
    ],
)
def test_partitioners_deterministic_and_cover(split) -> None:
    y = _labels()
    a, b = split(y, 7), split(y, 7)
    assert a.clients == b.clients and a.to_json() == b.to_json()
    _assert_covers(a, len(y))


def test_label_sorted_iid_fraction_controls_heterogeneity() -> None:
    y = _labels()
    skewed = label_sorted_split(y, 4, iid_fraction=0.0, seed=0)
    assert [len(h) for h in skewed.label_histograms()] == [1, 1, 1, 1]
    iid = label_sorted_split(y, 4, iid_fraction=1.0, seed=0)
    assert all(len(h) == 4 and min(h.values()) >= 10 for h in iid.label_histograms())
    half = label_sorted_split(y, 4, iid_fraction=0.5, seed=0)
    assert _majority(iid) < _majority(half) < _majority(skewed) == 1.0
    assert [len(c) for c in half.clients] == [100] * 4


def test_iid_fraction_from_paper_s() -> None:
    assert iid_fraction_from_paper_s(0.9) == pytest.approx(0.1)
    assert iid_fraction_from_paper_s(0.9, convention="text") == 0.9
    with pytest.raises(ValueError):
        iid_fraction_from_paper_s(1.5)


def test_dirichlet_alpha_and_min_size() -> None:
    y = _labels()
    sharp = dirichlet_split(y, 4, alpha=0.05, seed=0, min_size=5)
    flat = dirichlet_split(y, 4, alpha=1000.0, seed=0)
    assert _majority(sharp) > 0.6
    assert _majority(flat) < 0.35
    assert min(len(c) for c in sharp.clients) >= 5
    with pytest.raises(ValueError, match="min_size"):
        dirichlet_split(y, 5, alpha=0.001, seed=0, min_size=50, max_tries=3)


def test_group_split_keeps_groups_whole_and_balances() -> None:
    sizes = [50, 40, 30, 30, 20, 10, 10, 5, 5]
    groups = [f"title{g}" for g, s in enumerate(sizes) for _ in range(s)]
    p = group_split(groups, 3, seed=0)
    owners = {}
    for k, client in enumerate(p.clients):
        for i in client:
            assert owners.setdefault(groups[i], k) == k
    assert len(owners) == len(sizes)
    assert max(map(len, p.clients)) - min(map(len, p.clients)) <= 10
    with pytest.raises(ValueError, match="groups"):
        group_split(groups, 10, seed=0)


def test_train_test_split_per_client_stratified() -> None:
    y = _labels()
    base = label_sorted_split(y, 4, iid_fraction=0.5, seed=0)
    train, test = train_test_split_per_client(base, test_fraction=0.2, seed=1)
    for k in range(4):
        assert sorted(train.clients[k] + test.clients[k]) == base.clients[k]
        assert len(test.clients[k]) == 20
        full, held = base.label_histograms()[k], test.label_histograms()[k]
        assert all(abs(held.get(c, 0) - 0.2 * n) < 1 for c, n in full.items())
    again = train_test_split_per_client(base, test_fraction=0.2, seed=1)
    assert again[1].clients == test.clients
    plain_train, plain_test = train_test_split_per_client([[0, 1, 2, 3, 4], [5, 6, 7]], 0.4, seed=0)
    assert [len(c) for c in plain_test.clients] == [2, 1] and plain_train.labels is None


def test_partition_to_json() -> None:
    p = label_sorted_split(["a", "b", "a", "b"], 2, iid_fraction=0.0, seed=0)
    saved = json.loads(p.to_json())
    assert saved["clients"] == {"0": [0, 2], "1": [1, 3]}
    assert saved["label_histograms"] == {"0": {"a": 2}, "1": {"b": 2}}
    assert saved["method"] == "label_sorted" and saved["params"]["iid_fraction"] == 0.0


def test_flwr_datasets_adapters() -> None:
    from datasets import Dataset

    y = _labels(10, 3)
    ds = Dataset.from_dict({"text": [f"t{i}" for i in range(len(y))], "label": y})
    label_sorted = LabelSortedPartitioner(3, "label", iid_fraction=0.0, seed=0)
    dirichlet = DirichletLabelPartitioner(3, "label", alpha=1.0, seed=0, min_size=2)
    grouped = GroupPartitioner(3, "label", seed=0)
    for partitioner in (label_sorted, dirichlet, grouped):
        partitioner.dataset = ds
        parts = [partitioner.load_partition(k) for k in range(partitioner.num_partitions)]
        assert sorted(t for p in parts for t in p["text"]) == sorted(ds["text"])
        assert [list(p["label"]) for p in parts] == [[y[i] for i in c] for c in partitioner.partition.clients]
        if partitioner is not dirichlet:  # one label (or one whole group) per client
            assert sorted(label for p in parts for label in set(p["label"])) == [0, 1, 2]
    with pytest.raises(IndexError):
        grouped.load_partition(3)


def test_hub_records_match_the_file_loaders(monkeypatch):
    """``data_dir: hf://`` maps the hub's GLUE and SQuAD schemas onto the same records (hub call faked)."""
    import datasets

    from pf2lora.data import QAExample, TextExample, load_dataset

    calls = []

    def fake(path, config=None, split=None):
        calls.append((path, config, split))
        if path == "nyu-mll/glue":
            return datasets.Dataset.from_dict({"premise": ["p"], "hypothesis": ["h"], "label": [2], "idx": [0]})
        return datasets.Dataset.from_dict(
            {
                "id": ["q1", "q2"],
                "title": ["T", "T"],
                "context": ["abc def", "abc def"],
                "question": ["?", "??"],
                "answers": [{"text": ["def"], "answer_start": [4]}, {"text": [], "answer_start": []}],
            }
        )

    monkeypatch.setattr(datasets, "load_dataset", fake)
    assert load_dataset("mnli", "dev", "hf://") == [TextExample("p", "h", 2)]
    assert calls[-1] == ("nyu-mll/glue", "mnli", "validation_matched")
    qa = load_dataset("squad_v2", "train", "hf://")
    assert qa[0] == QAExample("q1", "T", "abc def", "?", ["def"], [4], False)
    assert qa[1].is_impossible and calls[-1] == ("rajpurkar/squad_v2", None, "train")
    with pytest.raises(ValueError, match="not supported"):
        load_dataset("e2e", "train", "hf://")


# ---------------------------------------------------------------- the shared held-out set (global metrics)


def test_held_out_sample_is_label_balanced() -> None:
    labels = [0] * 70 + [1] * 20 + [2] * 10
    idx = held_out_sample(labels, 60, 100, seed=0)
    assert Counter(labels[i] for i in idx) == {0: 10, 1: 10, 2: 10}  # as many as the rarest label allows
    assert idx == sorted(set(idx))
    assert held_out_sample(labels, 60, 100, seed=0) == idx and held_out_sample(labels, 60, 100, seed=1) != idx
    assert Counter(labels[i] for i in held_out_sample(labels, 10, 100, seed=0)) == {0: 3, 1: 3, 2: 3}
    uniform = held_out_sample(None, 5, 100, seed=0)
    assert len(set(uniform)) == 5 and all(0 <= i < 100 for i in uniform)
    with pytest.raises(ValueError, match="3 labels"):
        held_out_sample(labels, 2, 100, seed=0)


def _token_rows(rows: list[dict]) -> set[tuple[int, ...]]:
    return {tuple(r["input_ids"]) for r in rows}


@needs_data
def test_global_test_set_is_shared_balanced_and_disjoint(tiny_config: Path) -> None:
    from pf2lora.config import load_config
    from pf2lora.errors import InputError
    from pf2lora.experiment import prepare

    prepared = prepare(load_config(tiny_config, ["data.global_examples=40"]))
    info = prepared.partition["global_test"]
    assert info["split"] == "dev" and info["histogram"] == {"0": 20, "1": 20}  # auto: SST-2's dev split
    dev = load_dataset("sst2", "dev", DATA_DIR)
    shared = prepared.clients[0].global_test
    assert all(c.global_test is shared for c in prepared.clients) and len(shared) == 40
    assert [r["labels"] for r in shared] == [dev[i].label for i in info["indices"]]

    # held out of the pool (all of SST-2 dev here, so that every example would reach a client if it were not)
    overrides = ["data.split=dev", "data.max_examples=null", "data.global_split=pool", "data.global_examples=20"]
    prepared = prepare(load_config(tiny_config, overrides))
    shared = _token_rows(prepared.clients[0].global_test)
    assert prepared.partition["global_test"]["split"] == "pool" and len(shared) == 20
    for client in prepared.clients:
        batch = client.fetch(np.arange(client.num_train))
        train = {
            tuple(ids[m.bool()].tolist()) for ids, m in zip(batch["input_ids"], batch["attention_mask"], strict=True)
        }
        assert not shared & train and not shared & _token_rows(client.test)

    with pytest.raises(InputError, match=r"data.global_split: 'train' is the pool"):
        prepare(load_config(tiny_config, ["data.global_split=train"]), only=[])
