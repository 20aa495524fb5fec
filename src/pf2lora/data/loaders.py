"""Loaders for the benchmark datasets, reading the official file layouts under one ``data_dir``.

``load_dataset(name, split, data_dir)`` returns plain records (``TextExample``, ``QAExample`` or
``GenExample``). Each dataset is looked for in its own sub-directory of ``data_dir`` (``DATASET_LAYOUT``),
the layout of /work/shared/data and of the official downloads:

- cola: glue/CoLA, train in_domain_train.tsv; dev in_domain_dev.tsv + out_of_domain_dev.tsv (GLUE dev = both)
- sst2: glue/SST-2, train.tsv, dev.tsv
- qnli: glue/QNLI, train.tsv, dev.tsv
- mnli: glue/MNLI, train.tsv; dev = dev_matched.tsv; dev_mismatched = dev_mismatched.tsv
- mnli_subset: glue/MNLI-subset, train mnli_train_20k.tokenized.tsv; dev mnli_dev_matched_5k.tokenized.tsv
- qqp: glue/QQP, train.tsv, dev.tsv
- squad_v1: squad, train-v1.1.json, dev-v1.1.json
- squad_v2: squad, train-v2.0.json, dev-v2.0.json; train_first10titles = train-v2.0.first10titles.json
- e2e: e2e, trainset.csv, devset.csv; test = testset_w_refs.csv
- webnlg: webnlg, train/[1-7]triples/*.xml, dev/[1-7]triples/*.xml; test = test/testdata_with_lex.xml
  (seen + unseen categories); test_unseen = test/testdata_unseen_with_lex.xml

Label ids (``LABEL_NAMES[name][id]``) follow GLUE: CoLA 0 unacceptable / 1 acceptable; SST-2 0 negative /
1 positive; QNLI 0 entailment / 1 not_entailment; MNLI 0 entailment / 1 neutral / 2 contradiction;
QQP 0 not duplicate / 1 duplicate. GLUE test splits carry no labels and are not loaded.
"""

from __future__ import annotations

import csv
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TextExample:
    """A (pair-)classification example: ``text_b`` is None for single-sentence tasks."""

    text_a: str
    text_b: str | None
    label: int


@dataclass(frozen=True)
class QAExample:
    """One extractive-QA question; ``answers``/``answer_starts`` are parallel (empty when impossible)."""

    qid: str
    title: str
    context: str
    question: str
    answers: list[str]
    answer_starts: list[int]
    is_impossible: bool


@dataclass(frozen=True)
class GenExample:
    """One data-to-text input with all its human references; ``group`` is its natural client group."""

    source: str
    references: list[str]
    group: str


Example = TextExample | QAExample | GenExample

LABEL_NAMES: dict[str, tuple[str, ...]] = {
    "cola": ("unacceptable", "acceptable"),
    "sst2": ("negative", "positive"),
    "qnli": ("entailment", "not_entailment"),
    "mnli": ("entailment", "neutral", "contradiction"),
    "mnli_subset": ("entailment", "neutral", "contradiction"),
    "qqp": ("not_duplicate", "duplicate"),
}
QNLI_LABELS = {name: i for i, name in enumerate(LABEL_NAMES["qnli"])}
MNLI_LABELS = {name: i for i, name in enumerate(LABEL_NAMES["mnli"])}


@dataclass(frozen=True)
class DatasetLayout:
    """Where a dataset lives under ``data_dir``: its sub-directory and, per split, its files (or globs)."""

    subdir: str
    splits: Mapping[str, tuple[str, ...]]


DATASET_LAYOUT: dict[str, DatasetLayout] = {
    "cola": DatasetLayout(
        "glue/CoLA", {"train": ("in_domain_train.tsv",), "dev": ("in_domain_dev.tsv", "out_of_domain_dev.tsv")}
    ),
    "sst2": DatasetLayout("glue/SST-2", {"train": ("train.tsv",), "dev": ("dev.tsv",)}),
    "qnli": DatasetLayout("glue/QNLI", {"train": ("train.tsv",), "dev": ("dev.tsv",)}),
    "mnli": DatasetLayout(
        "glue/MNLI",
        {"train": ("train.tsv",), "dev": ("dev_matched.tsv",), "dev_mismatched": ("dev_mismatched.tsv",)},
    ),
    "mnli_subset": DatasetLayout(
        "glue/MNLI-subset",
        {"train": ("mnli_train_20k.tokenized.tsv",), "dev": ("mnli_dev_matched_5k.tokenized.tsv",)},
    ),
    "qqp": DatasetLayout("glue/QQP", {"train": ("train.tsv",), "dev": ("dev.tsv",)}),
    "squad_v1": DatasetLayout("squad", {"train": ("train-v1.1.json",), "dev": ("dev-v1.1.json",)}),
    "squad_v2": DatasetLayout(
        "squad",
        {
            "train": ("train-v2.0.json",),
            "dev": ("dev-v2.0.json",),
            "train_first10titles": ("train-v2.0.first10titles.json",),
        },
    ),
    "e2e": DatasetLayout("e2e", {"train": ("trainset.csv",), "dev": ("devset.csv",), "test": ("testset_w_refs.csv",)}),
    "webnlg": DatasetLayout(
        "webnlg",
        {
            "train": ("train/[1-7]triples/*.xml",),
            "dev": ("dev/[1-7]triples/*.xml",),
            "test": ("test/testdata_with_lex.xml",),
            "test_unseen": ("test/testdata_unseen_with_lex.xml",),
        },
    ),
}


def load_dataset(name: str, split: str, data_dir: str | Path) -> list[Example]:
    """Load split ``split`` of dataset ``name`` from its official files under ``data_dir`` (see module doc).

    ``data_dir = "hf://"`` reads GLUE and SQuAD from the Hugging Face hub instead (``pf2lora.data.hub``).
    """
    if name not in DATASET_LAYOUT:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASET_LAYOUT)}")
    if str(data_dir).startswith("hf://"):
        from pf2lora.data.hub import load_from_hub

        return load_from_hub(name, split)
    layout = DATASET_LAYOUT[name]
    if split not in layout.splits:
        raise ValueError(f"{name}: unknown split {split!r}; known: {', '.join(layout.splits)}")
    return _PARSERS[name](_resolve(name, Path(data_dir) / layout.subdir, layout.splits[split]))


def _resolve(name: str, directory: Path, patterns: tuple[str, ...]) -> list[Path]:
    """The files of one split in order, raising a one-line FileNotFoundError for the first one missing."""
    paths: list[Path] = []
    for pattern in patterns:
        found = sorted(directory.glob(pattern)) if "*" in pattern else [directory / pattern]
        if not found or not found[0].is_file():
            raise FileNotFoundError(
                f"{name}: {pattern} not found in {directory} (set data_dir to a copy of the official files)"
            )
        paths.extend(found)
    return paths


def _tsv_rows(path: Path) -> list[dict[str, str]]:
    """Rows of a GLUE-style TSV with a header, keyed by column name (quotes are literal text in GLUE)."""
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def _label(labels: Mapping[str, int], value: str, path: Path, row: int) -> int:
    """Map a label string to its id, naming the file and row if it is unknown."""
    if value not in labels:
        raise ValueError(f"{path}: row {row}: unknown label {value!r} (expected one of {sorted(labels)})")
    return labels[value]


def _parse_cola(paths: list[Path]) -> list[TextExample]:
    """CoLA raw files have no header: source, label (0/1), original mark, sentence."""
    out = []
    for path in paths:
        with path.open(encoding="utf-8", newline="") as f:
            out += [
                TextExample(row[3], None, int(row[1])) for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            ]
    return out


def _parse_sst2(paths: list[Path]) -> list[TextExample]:
    """SST-2: header ``sentence\\tlabel``."""
    return [TextExample(r["sentence"], None, int(r["label"])) for p in paths for r in _tsv_rows(p)]


def _parse_qnli(paths: list[Path]) -> list[TextExample]:
    """QNLI: index, question, sentence, label (entailment / not_entailment)."""
    return [
        TextExample(r["question"], r["sentence"], _label(QNLI_LABELS, r["label"], p, i))
        for p in paths
        for i, r in enumerate(_tsv_rows(p), 1)
    ]


def _nli_parser(label_column: str) -> Callable[[list[Path]], list[TextExample]]:
    """MNLI-style files, read by header name: sentence1, sentence2 and a text label column."""

    def parse(paths: list[Path]) -> list[TextExample]:
        return [
            TextExample(r["sentence1"], r["sentence2"], _label(MNLI_LABELS, r[label_column], p, i))
            for p in paths
            for i, r in enumerate(_tsv_rows(p), 1)
        ]

    return parse


def _parse_qqp(paths: list[Path]) -> list[TextExample]:
    """QQP: id, qid1, qid2, question1, question2, is_duplicate; truncated rows are skipped (as in transformers)."""
    return [
        TextExample(r["question1"], r["question2"], int(r["is_duplicate"]))
        for p in paths
        for r in _tsv_rows(p)
        if r.get("is_duplicate") not in (None, "")
    ]


def _parse_squad(paths: list[Path]) -> list[QAExample]:
    """SQuAD v1.1/v2.0 JSON: data → articles (title) → paragraphs (context) → qas."""
    out = []
    for path in paths:
        with path.open(encoding="utf-8") as f:
            articles = json.load(f)["data"]
        for article in articles:
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"]:
                    out.append(
                        QAExample(
                            qid=qa["id"],
                            title=article["title"],
                            context=paragraph["context"],
                            question=qa["question"],
                            answers=[a["text"] for a in qa["answers"]],
                            answer_starts=[int(a["answer_start"]) for a in qa["answers"]],
                            is_impossible=bool(qa.get("is_impossible", False)),
                        )
                    )
    return out


_E2E_NAME = re.compile(r"name\[([^\]]*)\]")


def _parse_e2e(paths: list[Path]) -> list[GenExample]:
    """E2E CSV (mr, ref): rows with the same MR become one example; group = the restaurant ``name[...]``."""
    refs: dict[str, list[str]] = {}
    for path in paths:
        with path.open(encoding="utf-8-sig", newline="") as f:
            for row in csv.DictReader(f):
                refs.setdefault(row["mr"], []).append(row["ref"])
    out = []
    for mr, references in refs.items():
        match = _E2E_NAME.search(mr)
        if match is None:
            raise ValueError(f"e2e: MR without name[...]: {mr!r}")
        out.append(GenExample(mr, references, match.group(1)))
    return out


def _parse_webnlg(paths: list[Path]) -> list[GenExample]:
    """WebNLG 2017 XML: source = modified triples "s | p | o" joined by " ; ", references = every <lex>."""
    out = []
    for path in paths:
        for entry in ET.parse(path).getroot().iter("entry"):
            triples = [(t.text or "").strip() for t in entry.iterfind("modifiedtripleset/mtriple")]
            references = [(lex.text or "").strip() for lex in entry.iterfind("lex")]
            out.append(GenExample(" ; ".join(triples), references, entry.get("category", "")))
    return out


_PARSERS: dict[str, Callable[[list[Path]], list]] = {
    "cola": _parse_cola,
    "sst2": _parse_sst2,
    "qnli": _parse_qnli,
    "mnli": _nli_parser("gold_label"),
    "mnli_subset": _nli_parser("label"),
    "qqp": _parse_qqp,
    "squad_v1": _parse_squad,
    "squad_v2": _parse_squad,
    "e2e": _parse_e2e,
    "webnlg": _parse_webnlg,
}
