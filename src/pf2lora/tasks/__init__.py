"""Tasks: how each kind of dataset becomes client data, a loss and an evaluator."""

from __future__ import annotations

from pf2lora.tasks.base import Task
from pf2lora.tasks.classification import Classification
from pf2lora.tasks.generation import Generation
from pf2lora.tasks.qa import QuestionAnswering

#: Which task each dataset name (``pf2lora.data.load_dataset``) is.
DATASET_TASKS: dict[str, type[Task]] = {
    "cola": Classification,
    "sst2": Classification,
    "qnli": Classification,
    "mnli": Classification,
    "mnli_subset": Classification,
    "qqp": Classification,
    "squad_v1": QuestionAnswering,
    "squad_v2": QuestionAnswering,
    "e2e": Generation,
    "webnlg": Generation,
}

__all__ = ["DATASET_TASKS", "Classification", "Generation", "QuestionAnswering", "Task"]
