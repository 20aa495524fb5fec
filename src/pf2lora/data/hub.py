"""Loading the same records from the Hugging Face hub, for users who have it (``data_dir: hf://``).

Only datasets whose hub schema is stable are mapped: GLUE (``nyu-mll/glue``) and SQuAD
(``rajpurkar/squad``, ``rajpurkar/squad_v2``). E2E and WebNLG hub copies differ in layout between mirrors;
for them point ``data_dir`` at the official files. Every failure (no ``datasets`` package, hub unreachable,
offline without a cached copy) is a one-line :class:`~pf2lora.errors.DataError`.
"""

from __future__ import annotations

from typing import Any

from pf2lora.data.loaders import Example, QAExample, TextExample
from pf2lora.errors import DataError

#: dataset → (hub repository, config, text fields); label ids are GLUE's, as in the file loaders.
GLUE = {
    "cola": ("cola", ("sentence", None)),
    "sst2": ("sst2", ("sentence", None)),
    "qnli": ("qnli", ("question", "sentence")),
    "mnli": ("mnli", ("premise", "hypothesis")),
    "qqp": ("qqp", ("question1", "question2")),
}
SQUAD = {"squad_v1": "rajpurkar/squad", "squad_v2": "rajpurkar/squad_v2"}
SPLITS = {"train": "train", "dev": "validation", "dev_mismatched": "validation_mismatched"}
LOCAL_COPY = "set data_dir to a local copy of the official files"


def load_from_hub(name: str, split: str) -> list[Example]:
    """Split ``split`` of ``name`` from the hub, as the same records the file loaders return."""
    if name not in GLUE and name not in SQUAD:
        raise DataError(f"{name}: loading from the hub is not supported; {LOCAL_COPY}")
    if split not in SPLITS:
        raise DataError(f"{name}: split {split!r} has no hub equivalent; known: {', '.join(SPLITS)}")
    hub_split = SPLITS[split]
    if name in GLUE:
        config, (a, b) = GLUE[name]
        if name == "mnli" and hub_split == "validation":
            hub_split = "validation_matched"
        rows = _hub_rows(name, "nyu-mll/glue", config, hub_split)
        return [TextExample(r[a], r[b] if b else None, int(r["label"])) for r in rows]
    rows = _hub_rows(name, SQUAD[name], None, hub_split)
    return [
        QAExample(
            qid=r["id"],
            title=r["title"],
            context=r["context"],
            question=r["question"],
            answers=list(r["answers"]["text"]),
            answer_starts=[int(s) for s in r["answers"]["answer_start"]],
            is_impossible=not r["answers"]["text"],
        )
        for r in rows
    ]


def _hub_rows(name: str, repo: str, config: str | None, split: str) -> Any:
    """``datasets.load_dataset(repo, config, split=split)``, its failures turned into one-line DataErrors.

    ``datasets`` reports an unreachable hub (no network, or ``HF_HUB_OFFLINE=1`` without a cached copy) as an
    OSError (ConnectionError); anything it raises about the dataset itself is a DatasetsError.
    """
    try:
        import datasets
        from datasets.exceptions import DatasetsError
    except ImportError as e:
        raise DataError(
            f"{name}: data_dir hf:// needs the Python package 'datasets' ({e}); pip install datasets, or {LOCAL_COPY}"
        ) from e
    source = repo if config is None else f"{repo} ({config})"
    try:
        return datasets.load_dataset(repo, config, split=split)
    except (OSError, DatasetsError) as e:
        reason = " ".join(f"{type(e).__name__}: {e}".splitlines())
        problem = "could not reach the Hugging Face hub" if isinstance(e, ConnectionError) else "could not load"
        raise DataError(f"{name}: {problem} for {source} split {split} ({reason}); {LOCAL_COPY}") from e
