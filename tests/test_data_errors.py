"""Broken copies of each official data layout give one-line DataErrors naming the file (and line, where one applies)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pf2lora.data import DATASET_LAYOUT, GenExample, QAExample, TextExample, load_dataset
from pf2lora.errors import DataError

MNLI_HEADER = (
    "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
    "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label\n"
)
MNLI_ROW = "0\t1\t1e\tgov\t( a )\t( b )\t(S a)\t(S b)\tA premise.\tA hypothesis.\tneutral\t{label}\n"
QQP_HEADER = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
E2E_ROW = '"name[The Eagle], eatType[pub]",The Eagle is a pub.\r\n'
WEBNLG_ENTRY = """    <entry category="Airport" eid="Id1" size="1">
      <modifiedtripleset>
        <mtriple>Abilene_Regional_Airport | cityServed | Abilene,_Texas</mtriple>
      </modifiedtripleset>
      <lex comment="good" lid="Id1">Abilene Regional Airport serves the city of Abilene in Texas.</lex>
    </entry>
"""
WEBNLG = "<?xml version='1.0' encoding='UTF-8'?>\n<benchmark>\n  <entries>\n{entries}  </entries>\n</benchmark>\n"


def squad(*questions: dict, title: str = "Normans") -> dict:
    """A one-article, one-paragraph SQuAD document holding ``questions``."""
    return {
        "version": "v2.0",
        "data": [{"title": title, "paragraphs": [{"context": "abc def", "qas": list(questions)}]}],
    }


def qa(qid: str = "q1", **fields: object) -> dict:
    """A SQuAD question answered by "def" at 4, with ``fields`` replaced (None deletes a key)."""
    out = {"id": qid, "question": "Which?", "answers": [{"text": "def", "answer_start": 4}], **fields}
    return {key: value for key, value in out.items() if value is not None}


def write(root: Path, name: str, split: str, content: str | bytes, index: int = 0) -> Path:
    """Write ``content`` (text is written as UTF-8, newlines as given) to a file of ``name``'s official layout."""
    layout = DATASET_LAYOUT[name]
    path = root / layout.subdir / layout.splits[split][index]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def assert_data_error(name: str, split: str, root: Path | str, shown: Path, line: int | None, *needles: str) -> str:
    """Load and check the DataError: one line, names ``shown`` (and ``line N``), contains every needle."""
    with pytest.raises(DataError) as info:
        load_dataset(name, split, root)
    message = str(info.value)
    assert len(message.splitlines()) == 1 and message == message.strip(), message
    assert str(shown) in message, message
    if line is not None:
        assert re.search(rf"\bline {line}\b", message), message
    for needle in needles:
        assert needle in message, message
    return message


# ---------------------------------------------------------------- defects in one file, per dataset and class

GOOD_SQUAD = json.dumps(squad(qa()), indent=1)
CASES = [
    # truncated: the last row cut in the middle
    ("cola-truncated", "cola", "train", "gj04\t1\t\tGood.\ngj04\t0", 2, "expected 4 tab-separated fields"),
    ("sst2-truncated", "sst2", "train", "sentence\tlabel\nfine .\t1\nbad sen", 3, "expected 2 tab-separated"),
    ("qnli-truncated", "qnli", "dev", "index\tquestion\tsentence\tlabel\n0\tQ?\tS.\tentailment\n1\tQ?", 3, "found 2"),
    ("mnli-truncated", "mnli", "train", MNLI_HEADER + MNLI_ROW.format(label="neutral") + "1\t2\t2e\tgov", 3, "found 4"),
    ("mnli_subset-truncated", "mnli_subset", "dev", "sentence1\tsentence2\tlabel\tgenre\nA .", 2, "found 1"),
    ("squad-truncated", "squad_v1", "dev", GOOD_SQUAD[:200], 13, "invalid JSON"),
    ("squad-truncated-in-string", "squad_v2", "dev", GOOD_SQUAD[:53], 5, "Unterminated string"),
    ("e2e-truncated", "e2e", "train", "mr,ref\r\n" + E2E_ROW + '"name[Blue Spice], food[Ita', 3, "cut short"),
    ("webnlg-truncated", "webnlg", "test", WEBNLG.format(entries=WEBNLG_ENTRY)[:300], 8, "cut short"),
    # wrong header: a required column missing
    ("sst2-header", "sst2", "dev", "sentence\tlable\nfine .\t1\n", 1, "lacks column(s) label; found ['sentence'"),
    ("qnli-header", "qnli", "dev", "index\tquestion\tlabel\n0\tQ?\tentailment\n", 1, "lacks column(s) sentence"),
    ("mnli-header", "mnli", "dev", MNLI_HEADER.replace("gold_label", "label2"), 1, "lacks column(s) gold_label"),
    ("mnli_subset-header", "mnli_subset", "train", "s1\ts2\tlabel\nA\tB\tneutral\n", 1, "sentence1, sentence2"),
    ("qqp-header", "qqp", "dev", "id\tq1\tq2\tis_duplicate\n1\tA?\tB?\t0\n", 1, "question1, question2; found"),
    ("e2e-header", "e2e", "dev", "meaning,reference\r\n" + E2E_ROW, 1, "lacks column(s) mr, ref"),
    # labels: text where numbers are expected, numbers outside the label set, too few fields
    ("sst2-text-label", "sst2", "train", "sentence\tlabel\nfine .\t1\ngood .\tpositive\n", 3, "'positive' is not"),
    ("sst2-label-2", "sst2", "dev", "sentence\tlabel\nfine .\t2\n", 2, "label '2' is not one of 0, 1"),
    ("cola-label-7", "cola", "train", "gj04\t1\t\tGood.\ngj04\t7\t\tOdd.\n", 2, "label '7' is not one of 0, 1"),
    ("cola-3-fields", "cola", "train", "gj04\t1\tGood.\n", 1, "(source, label, mark, sentence), found 3"),
    ("qnli-label", "qnli", "dev", "index\tquestion\tsentence\tlabel\n0\tQ?\tS.\t1\n", 2, "entailment, not_entailment"),
    ("mnli-label", "mnli", "train", MNLI_HEADER + MNLI_ROW.format(label="-"), 2, "label '-' is not one of"),
    ("mnli_subset-label", "mnli_subset", "dev", "sentence1\tsentence2\tlabel\tgenre\nA\tB\t2\tx\n", 2, "neutral"),
    ("qqp-label", "qqp", "train", QQP_HEADER + "1\t2\t3\tA?\tB?\tyes\n", 2, "label 'yes' is not one of 0, 1"),
    # non-UTF-8 bytes
    ("sst2-latin1", "sst2", "train", "sentence\tlabel\nok .\t1\ncaf\xe9 .\t0\n".encode("latin-1"), 3, "0xe9 is not"),
    ("cola-latin1", "cola", "train", "gj04\t1\t\tNa\xefve.\n".encode("latin-1"), 1, "column 11"),
    (
        "e2e-latin1",
        "e2e",
        "train",
        ("mr,ref\r\n" + E2E_ROW + E2E_ROW.replace("pub.", "caf\xe9.")).encode("cp1252"),
        3,
        "UTF-8",
    ),
    ("squad-latin1", "squad_v1", "train", GOOD_SQUAD.replace("Which", "Wh\xefch").encode("latin-1"), 12, "UTF-8"),
    (
        "webnlg-latin1",
        "webnlg",
        "test",
        WEBNLG.format(entries=WEBNLG_ENTRY).replace("city", "cit\xe9").encode("latin-1"),
        6,
        "column 48: invalid XML",
    ),
    # empty files: 0 bytes or only a header
    ("cola-empty", "cola", "train", "", None, "no examples (the file is empty)"),
    ("sst2-empty", "sst2", "train", "", None, "no examples (the file is empty)"),
    ("sst2-header-only", "sst2", "dev", "sentence\tlabel\n", None, "no examples after the header line"),
    ("qnli-header-only", "qnli", "dev", "index\tquestion\tsentence\tlabel\n", None, "no examples"),
    ("mnli-header-only", "mnli", "dev", MNLI_HEADER, None, "no examples"),
    ("qqp-header-only", "qqp", "train", QQP_HEADER, None, "no examples"),
    ("qqp-only-truncated-rows", "qqp", "train", QQP_HEADER + "1\t2\t3\tA?\n", None, "no examples"),
    ("squad-empty", "squad_v1", "dev", "", None, "no examples (the file is empty)"),
    ("squad-no-questions", "squad_v2", "dev", json.dumps({"version": "v2.0", "data": []}), None, "no examples"),
    ("e2e-empty", "e2e", "test", "", None, "no examples (the file is empty)"),
    ("e2e-header-only", "e2e", "test", "mr,ref\r\n", None, "no examples after the header line"),
    ("webnlg-empty", "webnlg", "test", "", None, "no examples (the file is empty)"),
    ("webnlg-no-entries", "webnlg", "test", WEBNLG.format(entries=""), None, "no <entry> under <benchmark>"),
    # SQuAD layout: path inside the JSON
    ("squad-top-list", "squad_v1", "dev", "[1, 2]", None, "top level is a list; expected the SQuAD layout"),
    ("squad-no-data", "squad_v1", "dev", '{"version": "1.1", "articles": []}', None, "missing top-level key 'data'"),
    ("squad-data-dict", "squad_v1", "dev", '{"data": {}}', None, "'data' should be a list of articles"),
    (
        "squad-no-title",
        "squad_v1",
        "dev",
        json.dumps({"data": [{"paragraphs": []}]}),
        None,
        "data[0]: missing key 'title'",
    ),
    (
        "squad-no-context",
        "squad_v1",
        "dev",
        json.dumps({"data": [{"title": "T", "paragraphs": [{"qas": []}]}]}),
        None,
        "data[0].paragraphs[0]: missing key 'context'",
    ),
    (
        "squad-no-question",
        "squad_v1",
        "train",
        json.dumps(squad(qa(), qa("q2", question=None))),
        None,
        "data[0].paragraphs[0].qas[1]: missing key 'question'",
    ),
    (
        "squad-qa-not-object",
        "squad_v2",
        "dev",
        json.dumps(squad(qa(), "q2")),
        None,
        "qas[1]: expected an object, found a string",
    ),
    (
        "squad-no-answer-text",
        "squad_v2",
        "dev",
        json.dumps(squad(qa(answers=[{"answer_start": 4}]))),
        None,
        "qas[0].answers[0]: missing key 'text'",
    ),
    (
        "squad-answer-start-str",
        "squad_v1",
        "dev",
        json.dumps(squad(qa(answers=[{"text": "def", "answer_start": "4"}]))),
        None,
        "qas[0].answers[0]: 'answer_start' should be an integer, found a string '4'",
    ),
    (
        "squad-answers-hf-dict",
        "squad_v1",
        "dev",
        json.dumps(squad(qa(answers={"text": ["def"], "answer_start": [4]}))),
        None,
        "qas[0]: 'answers' should be a list, found an object",
    ),
    (
        "squad-title-int",
        "squad_v1",
        "dev",
        json.dumps(squad(qa(), title=7)),
        None,
        "data[0]: 'title' should be a string, found an integer 7",
    ),
    # E2E: an MR without name[...]
    (
        "e2e-no-name",
        "e2e",
        "dev",
        "mr,ref\r\n" + E2E_ROW + '"eatType[pub], food[Thai]",A Thai pub.\r\n',
        3,
        "has no name[...]",
    ),
]


@pytest.mark.parametrize(
    ("name", "split", "content", "line", "needle"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_broken_file_is_one_line_data_error(
    tmp_path: Path, name: str, split: str, content: str | bytes, line: int | None, needle: str
) -> None:
    """One broken file of the official layout: a one-line DataError naming it, the line and the problem."""
    path = write(tmp_path, name, split, content)
    assert_data_error(name, split, tmp_path, path, line, needle)


def test_error_line_counts_multiline_csv_records(tmp_path: Path) -> None:
    """E2E references may span lines inside quotes: the line reported is where the bad record starts."""
    content = 'mr,ref\r\n"name[A]","Two\r\nlines."\r\n"food[Thai]",No name.\r\n'
    path = write(tmp_path, "e2e", "train", content)
    assert_data_error("e2e", "train", tmp_path, path, 4, "'food[Thai]' has no name[...]")


def test_second_file_of_a_split_is_named(tmp_path: Path) -> None:
    """CoLA dev is two files: the broken one is the one named."""
    write(tmp_path, "cola", "dev", "gj04\t1\t\tGood.\n", 0)
    path = write(tmp_path, "cola", "dev", "gj04\t1\t\tGood.\n\nclc95\tyes\t\tBad.\n", 1)
    assert_data_error("cola", "dev", tmp_path, path, 3, "label 'yes'")


def test_values_with_newlines_or_long_stay_on_one_line(tmp_path: Path) -> None:
    """Values from the file are shown by repr (newlines escaped) and shortened, so the message stays one line."""
    mr = "eatType[pub],\r\n" + "food[Thai], " * 30
    path = write(tmp_path, "e2e", "train", f'mr,ref\r\n"{mr}",A pub.\r\n')
    message = assert_data_error("e2e", "train", tmp_path, path, 2, "MR 'eatType[pub],\\r\\nfood[Thai], ", "...")
    assert len(message) < len(str(path)) + 150


# ---------------------------------------------------------------- missing files and directories, unknown splits


@pytest.mark.parametrize("name", sorted(DATASET_LAYOUT))
def test_missing_file(tmp_path: Path, name: str) -> None:
    """Each dataset names the missing file (or glob) and its directory, and says how to fix it."""
    pattern = DATASET_LAYOUT[name].splits["train"][0]
    directory = tmp_path / DATASET_LAYOUT[name].subdir
    message = assert_data_error(
        name, "train", tmp_path, directory, None, "set data_dir to a copy of the official files"
    )
    assert f"{pattern} not found" in message


def test_missing_file_is_also_file_not_found(tmp_path: Path) -> None:
    """Callers that catch FileNotFoundError (the CLI) still see a missing file."""
    with pytest.raises(FileNotFoundError):
        load_dataset("cola", "train", tmp_path)


def test_data_dir_missing_or_a_file(tmp_path: Path) -> None:
    """A data_dir that does not exist or is a file is named as such."""
    missing = tmp_path / "nowhere"
    assert_data_error("sst2", "train", missing, missing, None, "does not exist", "set data_dir")
    with pytest.raises(FileNotFoundError):
        load_dataset("sst2", "train", missing)
    a_file = tmp_path / "data.tsv"
    a_file.write_text("sentence\tlabel\n")
    assert_data_error("squad_v1", "dev", a_file, a_file, None, "is a file, not a directory")


def test_unknown_split_and_dataset(tmp_path: Path) -> None:
    """Unknown splits list the known ones (GLUE test splits are not loaded); unknown datasets too."""
    with pytest.raises(DataError, match=r"^sst2: unknown split 'test'; known: train, dev \(GLUE test files carry no"):
        load_dataset("sst2", "test", tmp_path)
    with pytest.raises(DataError, match=r"^webnlg: unknown split 'valid'; known: train, dev, test, test_unseen$"):
        load_dataset("webnlg", "valid", tmp_path)
    with pytest.raises(DataError, match=r"unknown dataset 'sst'; known: cola, sst2"):
        load_dataset("sst", "train", tmp_path)


def test_a_directory_where_a_file_should_be(tmp_path: Path) -> None:
    """A directory named like the data file is not read as one."""
    (tmp_path / "glue" / "SST-2" / "train.tsv").mkdir(parents=True)
    assert_data_error("sst2", "train", tmp_path, tmp_path / "glue" / "SST-2", None, "train.tsv not found")


# ---------------------------------------------------------------- tiny well-formed files (and official quirks) load


def test_well_formed_files_load(tmp_path: Path) -> None:
    """A tiny well-formed file of each format loads (CRLF, a byte-order mark and literal GLUE quotes included)."""
    write(tmp_path, "cola", "train", 'gj04\t1\t\tGood.\r\ngj04\t0\t*\tBad "quoted".\r\n')
    assert load_dataset("cola", "train", tmp_path) == [
        TextExample("Good.", None, 1),
        TextExample('Bad "quoted".', None, 0),
    ]
    write(tmp_path, "sst2", "train", '\ufeffsentence\tlabel\n" a quote at the start\t1\n')
    assert load_dataset("sst2", "train", tmp_path) == [TextExample('" a quote at the start', None, 1)]
    write(tmp_path, "mnli_subset", "dev", "sentence1\tsentence2\tlabel\tgenre\nA .\tB .\tcontradiction\tfiction\n")
    assert load_dataset("mnli_subset", "dev", tmp_path) == [TextExample("A .", "B .", 2)]
    write(tmp_path, "squad_v2", "dev", json.dumps(squad(qa(), qa("q2", answers=[], is_impossible=True))))
    assert load_dataset("squad_v2", "dev", tmp_path) == [
        QAExample("q1", "Normans", "abc def", "Which?", ["def"], [4], False),
        QAExample("q2", "Normans", "abc def", "Which?", [], [], True),
    ]
    write(
        tmp_path, "e2e", "train", 'mr,ref\r\n"name[A], food[Thai]","Two\r\nlines."\r\n"name[A], food[Thai]",More.\r\n'
    )
    assert load_dataset("e2e", "train", tmp_path) == [
        GenExample("name[A], food[Thai]", ["Two\r\nlines.", "More."], "A")
    ]
    write(tmp_path, "webnlg", "test", WEBNLG.format(entries=WEBNLG_ENTRY * 2))
    webnlg = load_dataset("webnlg", "test", tmp_path)
    assert len(webnlg) == 2 and webnlg[0].group == "Airport"
    assert webnlg[0].references == ["Abilene Regional Airport serves the city of Abilene in Texas."]


def test_qqp_skips_its_official_broken_rows(tmp_path: Path) -> None:
    """QQP train has rows cut by a stray newline (and an empty label): skipped, as in transformers."""
    content = (
        QQP_HEADER + "1\t2\t3\tA?\tB?\t1\n4\t5\t6\tHalf a\nquestion?\t0\n7\t8\t9\tC?\tD?\t\n10\t11\t12\tE?\tF?\t0\n"
    )
    write(tmp_path, "qqp", "train", content)
    assert load_dataset("qqp", "train", tmp_path) == [TextExample("A?", "B?", 1), TextExample("E?", "F?", 0)]


# ---------------------------------------------------------------- data_dir: hf://


def test_hub_without_datasets_package(monkeypatch: pytest.MonkeyPatch) -> None:
    """data_dir hf:// without the datasets package names the package and the way out."""
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DataError, match=r"^sst2: data_dir hf:// needs the Python package 'datasets'") as info:
        load_dataset("sst2", "train", "hf://")
    assert len(str(info.value).splitlines()) == 1 and "local copy" in str(info.value)


@pytest.mark.parametrize(
    ("error", "needle"),
    [
        (ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (LocalEntryNotFoundError)"), "could not reach"),
        (
            FileNotFoundError("Dataset 'nyu-mll/glue' doesn't exist on the Hub\nor cannot be accessed."),
            "could not load",
        ),
    ],
)
def test_hub_failure_is_one_line(monkeypatch: pytest.MonkeyPatch, error: Exception, needle: str) -> None:
    """Hub failures (unreachable, dataset not found; multi-line messages) become one-line DataErrors."""
    import datasets

    def fail(*args: object, **kwargs: object) -> None:
        """Stand-in for datasets.load_dataset that fails as the hub does."""
        raise error

    monkeypatch.setattr(datasets, "load_dataset", fail)
    with pytest.raises(DataError) as info:
        load_dataset("qnli", "dev", "hf://")
    message = str(info.value)
    assert len(message.splitlines()) == 1 and needle in message and "nyu-mll/glue (qnli)" in message
    assert message.endswith("set data_dir to a local copy of the official files")


def test_hub_offline_without_cache_is_one_line(tmp_path: Path) -> None:
    """The real ``datasets`` with HF_HUB_OFFLINE=1 and an empty cache: no network use, no traceback."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path), "HF_DATASETS_OFFLINE": "1"}
    code = (
        "from pf2lora.data import load_dataset\nfrom pf2lora.errors import DataError\n"
        "try:\n    load_dataset('sst2', 'dev', 'hf://')\nexcept DataError as e:\n    print('DataError:', e)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    [message] = done.stdout.splitlines()
    assert message.startswith("DataError: sst2: could not reach the Hugging Face hub for nyu-mll/glue (sst2)")
    assert "set data_dir to a local copy" in message
