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

Any problem with the files is a one-line :class:`~pf2lora.errors.DataError`
``<file>: line N: <what is wrong; what was expected>`` (lines 1-based, header included; SQuAD errors name a
JSON path such as ``data[3].paragraphs[0].qas[2]`` instead); a missing file or ``data_dir`` is a
:class:`DataFileNotFoundError`. Quirks of the official files load as they are: QQP's truncated train rows
are skipped (as in transformers), GLUE quotes are literal text.
"""

from __future__ import annotations

import csv
import json
import operator
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from xml.parsers.expat import ErrorString

from pf2lora.errors import DataError


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


_BINARY_IDS = {"0": 0, "1": 1}  # the label column of CoLA, SST-2 and QQP


class DataFileNotFoundError(DataError, FileNotFoundError):
    """A missing ``data_dir`` or data file: a DataError that callers catching FileNotFoundError also see."""


def load_dataset(name: str, split: str, data_dir: str | Path) -> list[Example]:
    """Load split ``split`` of dataset ``name`` from its official files under ``data_dir`` (see module doc).

    ``data_dir = "hf://"`` reads GLUE and SQuAD from the Hugging Face hub instead (``pf2lora.data.hub``).
    """
    if name not in DATASET_LAYOUT:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(DATASET_LAYOUT)}")
    if str(data_dir).startswith("hf://"):
        from pf2lora.data.hub import load_from_hub

        return load_from_hub(name, split)
    layout = DATASET_LAYOUT[name]
    if split not in layout.splits:
        note = " (GLUE test files carry no labels and are not loaded)" if name in LABEL_NAMES else ""
        raise DataError(f"{name}: unknown split {split!r}; known: {', '.join(layout.splits)}{note}")
    root = Path(data_dir)
    if not root.exists():
        raise DataFileNotFoundError(
            f"{name}: data_dir {root} does not exist (set data_dir to a copy of the official files)"
        )
    if not root.is_dir():
        raise DataError(
            f"{name}: data_dir {root} is a file, not a directory (set data_dir to a copy of the official files)"
        )
    return _PARSERS[name](_resolve(name, root / layout.subdir, layout.splits[split]))


def _resolve(name: str, directory: Path, patterns: tuple[str, ...]) -> list[Path]:
    """The files of one split in order, raising a one-line DataFileNotFoundError for the first one missing."""
    paths: list[Path] = []
    for pattern in patterns:
        found = sorted(directory.glob(pattern)) if "*" in pattern else [directory / pattern]
        if not found or not found[0].is_file():
            raise DataFileNotFoundError(
                f"{name}: {pattern} not found in {directory} (set data_dir to a copy of the official files)"
            )
        paths.extend(found)
    return paths


# ---------------------------------------------------------------- one-line errors naming the file (and line)


def _error(path: Path, problem: str, line: int | None = None, column: int | None = None) -> DataError:
    """A DataError ``<path>: line N[, column C]: <problem>``, flattened to one line whatever the values hold."""
    where = "" if line is None else f"line {line}: " if column is None else f"line {line}, column {column}: "
    return DataError(" ".join(f"{path}: {where}{problem}".splitlines()))


def _show(value: object, limit: int = 60) -> str:
    """``repr`` of a value read from a file, shortened so that a message stays one readable line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _decode_error(path: Path) -> DataError:
    """Locate the first non-UTF-8 line of ``path`` (the text decoder only knows an offset in its buffer)."""
    for number, raw in enumerate(path.read_bytes().split(b"\n"), 1):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as e:
            column = len(raw[: e.start].decode("utf-8")) + 1
            return _error(path, f"byte 0x{raw[e.start]:02x} is not UTF-8; expected UTF-8 text", number, column)
    return _error(path, "is not UTF-8 text; expected UTF-8 text")


def _open_text(path: Path) -> TextIO:
    """Open a data file as UTF-8 text (a leading byte-order mark is dropped); a DataError if it cannot be opened."""
    try:
        return path.open(encoding="utf-8-sig", newline="")
    except OSError as e:
        raise _error(path, f"cannot be opened ({e.strerror or e})") from e


def _label(labels: Mapping[str, int], value: str, path: Path, line: int) -> int:
    """The id of a label string, or a DataError naming the file, line and the task's label set."""
    label = labels.get(value)
    if label is None:
        raise _error(path, f"label {_show(value)} is not one of {', '.join(labels)}", line)
    return label


# ---------------------------------------------------------------- delimited text (GLUE TSV, E2E CSV)


def _rows(
    path: Path,
    columns: tuple[str, ...],
    *,
    fields: tuple[str, ...] | None = None,
    skip_short: bool = False,
    delimiter: str = "\t",
    quoting: int = csv.QUOTE_NONE,
) -> Iterator[tuple[int, Any]]:
    """(line, values of ``columns``) per record of a delimited file whose header names its fields.

    ``fields`` names the fields of a file without a header (CoLA). Records too short for ``columns`` are
    an error, or skipped with ``skip_short`` (QQP). GLUE quotes are literal text (QUOTE_NONE).
    """
    separated = "tab-separated" if delimiter == "\t" else "comma-separated"
    with _open_text(path) as f:
        reader = csv.reader(f, delimiter=delimiter, quoting=quoting, strict=True)
        end = count = 0
        try:
            names = fields or next(reader, [])
            if not names:
                raise _error(path, "no examples (the file is empty)")
            missing = [c for c in columns if c not in names]
            if missing:
                raise _error(path, f"header lacks column(s) {', '.join(missing)}; found {_show(names, 120)}", 1)
            index = [names.index(c) for c in columns]
            need, pick = max(index) + 1, operator.itemgetter(*index)
            end = reader.line_num
            for row in reader:
                start, end = end + 1, reader.line_num
                if len(row) < need:
                    if skip_short or not row:
                        continue
                    raise _error(
                        path,
                        f"expected {need} {separated} fields ({', '.join(names[:need])}), found {len(row)}; "
                        "is the row cut short?",
                        start,
                    )
                count += 1
                yield start, pick(row)
        except UnicodeDecodeError:
            raise _decode_error(path) from None
        except csv.Error as e:
            raise _error(path, f"unreadable record ({e}); is the file cut short?", end + 1) from None
    if not count:
        raise _error(path, "no examples (the file is empty)" if fields else "no examples after the header line")


def _parse_cola(paths: list[Path]) -> list[TextExample]:
    """CoLA raw files have no header: source, label (0/1), original mark, sentence."""
    fields = ("source", "label", "mark", "sentence")
    return [
        TextExample(sentence, None, _label(_BINARY_IDS, label, p, line))
        for p in paths
        for line, (label, sentence) in _rows(p, ("label", "sentence"), fields=fields)
    ]


def _parse_sst2(paths: list[Path]) -> list[TextExample]:
    """SST-2: header ``sentence\\tlabel``."""
    return [
        TextExample(sentence, None, _label(_BINARY_IDS, label, p, line))
        for p in paths
        for line, (sentence, label) in _rows(p, ("sentence", "label"))
    ]


def _parse_qnli(paths: list[Path]) -> list[TextExample]:
    """QNLI: index, question, sentence, label (entailment / not_entailment)."""
    return [
        TextExample(question, sentence, _label(QNLI_LABELS, label, p, line))
        for p in paths
        for line, (question, sentence, label) in _rows(p, ("question", "sentence", "label"))
    ]


def _nli_parser(label_column: str) -> Callable[[list[Path]], list[TextExample]]:
    """MNLI-style files, read by header name: sentence1, sentence2 and a text label column."""

    def parse(paths: list[Path]) -> list[TextExample]:
        return [
            TextExample(s1, s2, _label(MNLI_LABELS, label, p, line))
            for p in paths
            for line, (s1, s2, label) in _rows(p, ("sentence1", "sentence2", label_column))
        ]

    return parse


def _parse_qqp(paths: list[Path]) -> list[TextExample]:
    """QQP: id, qid1, qid2, question1, question2, is_duplicate; truncated rows are skipped (as in transformers)."""
    return [
        TextExample(q1, q2, _label(_BINARY_IDS, label, p, line))
        for p in paths
        for line, (q1, q2, label) in _rows(p, ("question1", "question2", "is_duplicate"), skip_short=True)
        if label
    ]


# ---------------------------------------------------------------- SQuAD JSON

_JSON_TYPES = {
    dict: "an object",
    list: "a list",
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
}
#: the SQuAD levels: required keys with their JSON types, and the key holding the next level's list
_SQUAD_LEVELS: tuple[tuple[tuple[tuple[str, type], ...], str | None], ...] = (
    ((("title", str), ("paragraphs", list)), "paragraphs"),
    ((("context", str), ("qas", list)), "qas"),
    ((("id", str), ("question", str), ("answers", list)), "answers"),
    ((("text", str), ("answer_start", int)), None),
)


def _json_type(value: object) -> str:
    """How a JSON value is named in messages ("a string '12'", "null")."""
    kind = _JSON_TYPES.get(type(value), "null")
    return f"{kind} {_show(value, 30)}" if isinstance(value, (str, int, float)) else kind


def _json_problem(obj: object, keys: tuple[tuple[str, type], ...]) -> str | None:
    """How ``obj`` differs from a JSON object holding ``keys`` with values of the given types, or None."""
    if type(obj) is not dict:
        return f"expected an object, found {_json_type(obj)}"
    for key, kind in keys:
        if key not in obj:
            return f"missing key {key!r}"
        if type(obj[key]) is not kind:
            return f"{key!r} should be {_JSON_TYPES[kind]}, found {_json_type(obj[key])}"
    return None


def _squad_problem(items: list[Any], where: str = "data", depth: int = 0) -> str | None:
    """The first place (as a JSON path) and way in which ``items`` at level ``depth`` differ from SQuAD, or None."""
    keys, child = _SQUAD_LEVELS[depth]
    for n, item in enumerate(items):
        if (problem := _json_problem(item, keys)) is not None:
            return f"{where}[{n}]: {problem}"
        if child is not None and (problem := _squad_problem(item[child], f"{where}[{n}].{child}", depth + 1)):
            return problem
    return None


def _squad_articles(path: Path) -> list[Any]:
    """The ``data`` list of a SQuAD JSON file, with JSON syntax and top-level layout errors as DataErrors."""
    with _open_text(path) as f:
        try:
            text = f.read()
        except UnicodeDecodeError:
            raise _decode_error(path) from None
    if not text.strip():
        raise _error(path, "no examples (the file is empty)")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        ends_early = e.pos >= len(text.rstrip()) or e.msg.startswith("Unterminated string")
        cut = "; is the file cut short?" if ends_early else ""
        raise _error(path, f"invalid JSON: {e.msg.removesuffix(' starting at')}{cut}", e.lineno, e.colno) from None
    layout = 'expected the SQuAD layout {"version": ..., "data": [articles]}'
    if type(doc) is not dict:
        raise _error(path, f"top level is {_json_type(doc)}; {layout}")
    if "data" not in doc:
        raise _error(path, f"missing top-level key 'data' (found {_show(sorted(doc), 80)}); {layout}")
    if type(doc["data"]) is not list:
        raise _error(path, f"'data' should be a list of articles, found {_json_type(doc['data'])}")
    return doc["data"]


def _parse_squad(paths: list[Path]) -> list[QAExample]:
    """SQuAD v1.1/v2.0 JSON: data → articles (title) → paragraphs (context) → qas; errors give the JSON path.

    The fast path is a plain walk plus one type check over all records; ``_squad_problem`` locates a failure.
    """
    out = []
    for path in paths:
        articles = _squad_articles(path)
        try:
            examples = [
                QAExample(
                    qid=qa["id"],
                    title=article["title"],
                    context=paragraph["context"],
                    question=qa["question"],
                    answers=[a["text"] for a in qa["answers"]],
                    answer_starts=[a["answer_start"] for a in qa["answers"]],
                    is_impossible=bool(qa.get("is_impossible", False)),
                )
                for article in articles
                for paragraph in article["paragraphs"]
                for qa in paragraph["qas"]
            ]
        except (KeyError, TypeError):
            examples = None
        if examples is None or not _squad_types_ok(examples):
            raise _error(path, _squad_problem(articles) or "not in the SQuAD layout")
        if not examples:
            raise _error(path, _squad_problem(articles) or "no examples (no questions under data[].paragraphs[].qas)")
        out += examples
    return out


def _squad_types_ok(examples: list[QAExample]) -> bool:
    """Whether every text field is a string and every answer_start an int (set scans: no per-record objects)."""
    texts = {type(x.qid) for x in examples} | {type(x.question) for x in examples}
    texts |= {type(x.title) for x in examples} | {type(x.context) for x in examples}
    texts |= {type(t) for x in examples for t in x.answers}
    return texts <= {str} and {type(s) for x in examples for s in x.answer_starts} <= {int}


# ---------------------------------------------------------------- E2E CSV, WebNLG XML

_E2E_NAME = re.compile(r"name\[([^\]]*)\]")


def _parse_e2e(paths: list[Path]) -> list[GenExample]:
    """E2E CSV (mr, ref): rows with the same MR become one example; group = the restaurant ``name[...]``."""
    refs: dict[str, list[str]] = {}
    out = []
    for path in paths:
        for line, (mr, ref) in _rows(path, ("mr", "ref"), delimiter=",", quoting=csv.QUOTE_MINIMAL):
            references = refs.get(mr)
            if references is None:
                match = _E2E_NAME.search(mr)
                if match is None:
                    raise _error(
                        path, f"MR {_show(mr)} has no name[...]; expected e.g. 'name[The Eagle], eatType[pub]'", line
                    )
                references = refs[mr] = []
                out.append(GenExample(mr, references, match.group(1)))
            references.append(ref)
    return out


def _parse_webnlg(paths: list[Path]) -> list[GenExample]:
    """WebNLG 2017 XML: source = modified triples "s | p | o" joined by " ; ", references = every <lex>."""
    out = []
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError as e:
            raise _error(path, f"cannot be read ({e.strerror or e})") from e
        if not data.strip():
            raise _error(path, "no examples (the file is empty)")
        try:
            root = ET.fromstring(data)
        except ET.ParseError as e:
            line, column = e.position
            cut = "; is the file cut short?" if line > data.rstrip().count(b"\n") else ""
            raise _error(path, f"invalid XML: {ErrorString(e.code)}{cut}", line, column + 1) from None
        entries = list(root.iter("entry"))
        if not entries:
            raise _error(path, f"no examples (no <entry> under <{root.tag}>; expected <benchmark><entries><entry>)")
        for entry in entries:
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
