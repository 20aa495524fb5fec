"""Every input error is one ``error:`` line from the CLI (a traceback only with ``--debug``).

The reproducers are the issue's list, run through the real command line (in-process) on the mini SST-2
config cut to a few examples.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from pf2lora.cli import app

ROOT = Path(__file__).resolve().parents[1]
C = str(ROOT / "configs" / "mini" / "sst2.yaml")
T = [
    "--set",
    "data.max_examples=64",
    "--set",
    "data.global_examples=16",
    "--set",
    "partition.num_clients=2",
    "--set",
    "federation.rounds=1",
    "--set",
    "federation.local_steps=1",
]
DATA = ROOT.parent / "shared" / "data"

pytestmark = pytest.mark.skipif(not (DATA / "glue" / "SST-2").is_dir(), reason="needs ../shared/data")


def invoke(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(app, args)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def one_line_error(args: list[str], code: int = 2) -> str:
    exit_code, output = invoke(args)
    lines = [line for line in output.splitlines() if line.strip()]
    assert exit_code == code, output
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], output  # round log lines may precede it
    assert "Traceback" not in output
    return errors[0]


def sets(*items: str) -> list[str]:
    return [x for item in items for x in ("--set", item)]


CASES = {
    "yaml in --set": (sets("compare=[pf2lora,homlora"), "compare"),
    "empty compare": (sets("compare=[]"), "compare"),
    "duplicate in compare": (sets("compare=[pf2lora,pf2lora]"), "(from --set compare=[pf2lora,pf2lora])"),
    "data_dir not a string": (sets("data.data_dir=5"), "data.data_dir"),
    "r_private 0": (sets("lora.r_private=0"), "lora.r_private"),
    "more clients than data": (sets("partition.num_clients=40"), "num_clients"),
    "negative seed": (sets("seed=-1"), "seed"),
    "unlabelled split": (sets("data.split=test"), "test"),
    "missing model": (sets("model.name=/nonexistent"), "model.name"),
    "typo in target": (sets("lora.target_modules=[qurey]"), "qurey"),
    "one typo among targets": (sets("lora.target_modules=[query,valeu]"), "valeu"),
    "head as target": (sets("lora.target_modules=[classifier]"), "classifier"),
    "unknown head module": (sets("model.head_modules=[bert.poolr]"), "model.head_modules"),
    "target inside the head": (
        sets("model.head_modules=[bert.pooler,classifier]", "lora.target_modules=[dense]"),
        "dense",
    ),
    "huge rank": (sets("lora.r=1000000000000000000000000000000"), "lora.r"),
    "nan alpha": (sets("lora.alpha=.nan"), "lora.alpha"),
    "inf lr": (sets("algorithms.pf2lora.lr=.inf"), "algorithms.pf2lora.lr"),
    "boolean rounds": (sets("federation.rounds=true"), "federation.rounds"),
    "squad stride": (
        sets("data.dataset=squad_v1", "task.max_length=32", "task.doc_stride=64", "compare=[homlora]"),
        "doc_stride",
    ),
    "encoder for generation": (sets("data.dataset=e2e", "compare=[homlora]"), "model.name"),
    "hetlora ranks": (sets("algorithms.hetlora.ranks=[8,8,8]", "compare=[hetlora]"), "ranks"),
    "absurd learning rate": (sets("algorithms.pf2lora.lr=1e300"), "algorithms.pf2lora.lr"),
    "second seed": (sets("federation.seed=3"), "federation.seed"),
    "attention kernel": (sets("model.attn_implementation=fast"), "model.attn_implementation"),
    "recursive alias": (sets("compare=&a [*a]"), "refers to itself"),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_reproducer_is_one_line(case: str, tmp_path: Path) -> None:
    extra, needle = CASES[case]
    line = one_line_error(["compare", C, "--out", str(tmp_path / "x"), *T, *extra])
    assert needle in line
    assert not (tmp_path / "x").exists()  # nothing is left behind: a corrected rerun needs no --overwrite


def test_bad_config_files(tmp_path: Path) -> None:
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"name: caf\xe9\n")
    assert "latin.yaml" in one_line_error(["run", str(latin), "--out", str(tmp_path / "a")])
    for text in (
        "1: 2\n",
        "[]\n",
        "federation: {rounds: 2}\nfederation: {rounds: 3}\n",
        "compare: &a [pf2lora, *a]\n",
    ):
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        assert "bad.yaml" in one_line_error(["run", str(bad), "--out", str(tmp_path / "b")])


def test_out_must_be_a_writable_directory_before_anything_loads(tmp_path: Path) -> None:
    line = one_line_error(["compare", C, "--out", str(ROOT / "README.md"), *T])
    assert "README.md" in line and "not a directory" in line
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    assert "not a pf2lora run" in one_line_error(["run", C, "--out", str(stranger), *T, "--overwrite"])
    assert (stranger / "notes.txt").read_text() == "mine"


def test_synthetic_nan_lr(tmp_path: Path) -> None:
    assert "lr" in one_line_error(["synthetic", "--out", str(tmp_path / "s"), "--lr", "nan"])


def test_divergence_stops_with_one_line_and_keeps_the_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "d"
    args = [
        "run",
        C,
        "--out",
        str(out),
        *T,
        *sets(
            "federation.rounds=3",
            "federation.local_steps=2",
            "algorithms.pf2lora.optimizer=sgd",
            "algorithms.pf2lora.lr=1e6",
        ),
    ]
    line = one_line_error(args, code=1)
    assert "pf2lora" in line and "round" in line and "client" in line and "learning rate" in line
    assert "NaN" not in (out / "metrics.jsonl").read_text()


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["run", C, "--out", str(tmp_path / "x"), *T, *sets("seed=-1"), "--debug"])
    assert result.exit_code != 0 and result.exception is not None and not isinstance(result.exception, SystemExit)


def test_generation_prompt_longer_than_max_length() -> None:
    from transformers import AutoTokenizer

    from pf2lora.config import TaskSettings
    from pf2lora.data import GenExample
    from pf2lora.errors import InputError
    from pf2lora.models import minilm_path
    from pf2lora.tasks import Generation

    tok = AutoTokenizer.from_pretrained(minilm_path())
    tok.eos_token = tok.sep_token
    task = Generation(tok, TaskSettings(max_length=8))
    examples = [GenExample("name[The Eagle], eatType[coffee shop], food[French]", ["The Eagle is a cafe."], "g")]
    with pytest.raises(InputError, match=r"task\.max_length"):
        task.encode(examples)
    assert task.encode([GenExample("x", ["y"], "g")])  # a short prompt keeps its target
    with pytest.raises(InputError, match=r"task\.prompt"):
        Generation(tok, TaskSettings(prompt="Describe:"))


def test_usage_errors_are_one_line(tmp_path: Path) -> None:
    """Through the real entry point: missing arguments, unknown options and commands, unparsable values."""
    import subprocess
    import sys

    for args in (
        ["run"],
        ["run", C, "--out", str(tmp_path / "x"), "--bogus"],
        ["synthetic", "--out", str(tmp_path / "s"), "--seed", "abc"],
        ["nosuchcommand"],
    ):
        done = subprocess.run([sys.executable, "-m", "pf2lora.cli", *args], capture_output=True, text=True)
        lines = (done.stdout + done.stderr).strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (args, lines)
