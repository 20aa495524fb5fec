"""Datasets and client partitions: official-layout loaders (``loaders``) and partitioners (``partition``)."""

from pf2lora.data.loaders import (
    DATASET_LAYOUT,
    LABEL_NAMES,
    MNLI_LABELS,
    QNLI_LABELS,
    DatasetLayout,
    Example,
    GenExample,
    QAExample,
    TextExample,
    load_dataset,
)
from pf2lora.data.partition import (
    DirichletLabelPartitioner,
    GroupPartitioner,
    LabelSortedPartitioner,
    Partition,
    dirichlet_split,
    group_split,
    held_out_sample,
    iid_fraction_from_paper_s,
    label_sorted_split,
    train_test_split_per_client,
)

__all__ = [
    "DATASET_LAYOUT",
    "LABEL_NAMES",
    "MNLI_LABELS",
    "QNLI_LABELS",
    "DatasetLayout",
    "DirichletLabelPartitioner",
    "Example",
    "GenExample",
    "GroupPartitioner",
    "LabelSortedPartitioner",
    "Partition",
    "QAExample",
    "TextExample",
    "dirichlet_split",
    "group_split",
    "held_out_sample",
    "iid_fraction_from_paper_s",
    "label_sorted_split",
    "load_dataset",
    "train_test_split_per_client",
]
