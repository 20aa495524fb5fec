"""Loading the same records from the Hugging Face hub, for users who have it (``data_dir: hf://``).

Only datasets whose hub schema is stable are mapped: GLUE (``nyu-mll/glue``) and SQuAD
(``rajpurkar/squad``, ``rajpurkar/squad_v2``). E2E and WebNLG hub copies differ in layout between mirrors;
for them point ``data_dir`` at the official files.
"""

from __future__ import annotations

from typing import Any

from pf2lora.data.loaders import Example, QAExample, TextExample

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


def load_from_hub(name: str, split: str) -> list[Example]:
    """Split ``split`` of ``name`` from the hub, as the same records the file loaders return."""
    import datasets

    if split not in SPLITS:
        raise ValueError(f"{name}: split {split!r} has no hub equivalent; known: {', '.join(SPLITS)}")
    hub_split = SPLITS[split]
    if name in GLUE:
        config, (a, b) = GLUE[name]
        if name == "mnli" and hub_split == "validation":
            hub_split = "validation_matched"
        rows: Any = datasets.load_dataset("nyu-mll/glue", config, split=hub_split)
        return [TextExample(r[a], r[b] if b else None, int(r["label"])) for r in rows]
    if name in SQUAD:
        rows = datasets.load_dataset(SQUAD[name], split=hub_split)
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
    raise ValueError(f"{name}: loading from the hub is not supported; set data_dir to the official files")
