"""Client partitioners: split one pool of examples into per-client index lists.

The functions work on a plain sequence of labels (or natural groups), one per example, and return a
``Partition``; the ``*Partitioner`` classes wrap them in flwr-datasets' ``Partitioner`` interface for a
Hugging Face ``datasets.Dataset`` (given the label/group column). Every split is a deterministic function
of its arguments and ``seed`` (``numpy.random.default_rng``); client index lists are sorted.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from datasets import Dataset
from flwr_datasets.partitioner import Partitioner


@dataclass(frozen=True)
class Partition:
    """Per-client example indices into one pool, with the per-example labels (or groups) used to split it."""

    clients: list[list[int]]
    labels: Sequence[Hashable] | None = None
    method: str = ""
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def num_clients(self) -> int:
        """Number of clients."""
        return len(self.clients)

    def label_histograms(self) -> list[dict[Hashable, int]]:
        """Per-client count of each label (sorted by label), to inspect or report the heterogeneity."""
        if self.labels is None:
            raise ValueError("this partition carries no labels")
        return [dict(sorted(Counter(self.labels[i] for i in client).items())) for client in self.clients]

    def to_json(self) -> str:
        """JSON of the method, its parameters, client → example indices and per-client label histograms."""
        histograms = None
        if self.labels is not None:
            histograms = {
                str(k): {str(label): n for label, n in h.items()} for k, h in enumerate(self.label_histograms())
            }
        return json.dumps(
            {
                "method": self.method,
                "params": self.params,
                "num_clients": self.num_clients,
                "clients": {str(k): client for k, client in enumerate(self.clients)},
                "label_histograms": histograms,
            }
        )


def iid_fraction_from_paper_s(s: float, convention: Literal["experiments", "text"] = "experiments") -> float:
    """Convert the PF2LoRA paper's similarity ``s`` into ``iid_fraction`` for ``label_sorted_split``.

    The paper's text defines s as "(100·s)% i.i.d." (``convention="text"``: iid_fraction = s), but its
    experiments call s = 0.9/1.0 "high heterogeneity" (``convention="experiments"``: iid_fraction = 1 − s).
    """
    if not 0.0 <= s <= 1.0:
        raise ValueError(f"s must be in [0, 1], got {s}")
    if convention == "experiments":
        return 1.0 - s
    if convention == "text":
        return s
    raise ValueError(f"convention must be 'experiments' or 'text', got {convention!r}")


def label_sorted_split(labels: Sequence[Hashable], num_clients: int, iid_fraction: float, seed: int) -> Partition:
    """The "similarity" split of Karimireddy et al. (2020, SCAFFOLD), with equal client sizes.

    Each client's share is ``iid_fraction`` drawn i.i.d. from the whole pool and the rest a contiguous chunk
    of the remaining examples sorted by label: ``iid_fraction=1`` is i.i.d., ``0`` gives each client as few
    labels as possible. The PF2LoRA paper's ``s`` is ambiguous about this direction: see
    ``iid_fraction_from_paper_s``.
    """
    if not 0.0 <= iid_fraction <= 1.0:
        raise ValueError(f"iid_fraction must be in [0, 1], got {iid_fraction}")
    codes = _encode(labels)
    shares = _even_sizes(len(codes), num_clients)
    n_iid = [int(np.floor(iid_fraction * share + 0.5)) for share in shares]
    order = np.random.default_rng(seed).permutation(len(codes))
    iid_pool, rest = order[: sum(n_iid)], order[sum(n_iid) :]
    rest = rest[np.argsort(codes[rest], kind="stable")]  # sorted by label, random order within a label
    clients, a, b = [], 0, 0
    for share, q in zip(shares, n_iid, strict=True):
        clients.append(sorted(iid_pool[a : a + q].tolist() + rest[b : b + share - q].tolist()))
        a, b = a + q, b + share - q
    params = {"num_clients": num_clients, "iid_fraction": iid_fraction, "seed": seed}
    return Partition(clients, list(labels), "label_sorted", params)


def dirichlet_split(
    labels: Sequence[Hashable], num_clients: int, alpha: float, seed: int, min_size: int = 10, max_tries: int = 100
) -> Partition:
    """Per-label Dirichlet(alpha) proportions over clients (Hsu et al. 2019): small alpha, skewed clients.

    Redraws (up to ``max_tries`` times, deterministically) until every client holds ``min_size`` examples.
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    codes = _encode(labels)
    _check_num_clients(len(codes), num_clients)
    if min_size * num_clients > len(codes):
        raise ValueError(f"cannot give {num_clients} clients {min_size} examples each from {len(codes)}")
    rng = np.random.default_rng(seed)
    by_label = [np.flatnonzero(codes == c) for c in range(int(codes.max()) + 1)]
    for _ in range(max_tries):
        clients: list[list[int]] = [[] for _ in range(num_clients)]
        for members in by_label:
            members = rng.permutation(members)
            cuts = (np.cumsum(rng.dirichlet(np.full(num_clients, alpha)))[:-1] * len(members)).astype(int)
            for k, part in enumerate(np.split(members, cuts)):
                clients[k] += part.tolist()
        if min(map(len, clients)) >= min_size:
            params = {"num_clients": num_clients, "alpha": alpha, "seed": seed, "min_size": min_size}
            return Partition([sorted(c) for c in clients], list(labels), "dirichlet", params)
    raise ValueError(
        f"dirichlet_split: no draw gave every client >= {min_size} examples in {max_tries} tries "
        f"(raise alpha or lower min_size)"
    )


def group_split(groups: Sequence[Hashable], num_clients: int, seed: int) -> Partition:
    """Assign whole natural groups (SQuAD title, WebNLG category, E2E restaurant) to clients.

    Greedy largest-first onto the currently smallest client balances example counts; ``seed`` only breaks
    ties between equally sized groups.
    """
    codes = _encode(groups)
    counts = np.bincount(codes)
    if len(counts) < num_clients:
        raise ValueError(f"{len(counts)} groups cannot fill {num_clients} clients")
    order = np.random.default_rng(seed).permutation(len(counts))
    order = order[np.argsort(-counts[order], kind="stable")]
    owner = np.empty(len(counts), dtype=int)
    loads = np.zeros(num_clients, dtype=int)
    for g in order:
        owner[g] = k = int(np.argmin(loads))
        loads[k] += counts[g]
    example_owner = owner[codes]
    clients = [np.flatnonzero(example_owner == k).tolist() for k in range(num_clients)]
    return Partition(clients, list(groups), "group", {"num_clients": num_clients, "seed": seed})


def train_test_split_per_client(
    indices: Partition | Sequence[Sequence[int]],
    test_fraction: float,
    seed: int,
    labels: Sequence[Hashable] | None = None,
) -> tuple[Partition, Partition]:
    """Split every client's examples into local train and test parts with the same distribution.

    Stratified by label when ``labels`` (indexed like the pool) are given, or carried by a ``Partition``;
    each client's test size is round(test_fraction · its size), spread over labels by largest remainder.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    clients = indices.clients if isinstance(indices, Partition) else [list(c) for c in indices]
    if labels is None and isinstance(indices, Partition):
        labels = indices.labels
    codes = _encode(labels) if labels is not None else None
    rng = np.random.default_rng(seed)
    train, test = [], []
    for client in clients:
        idx = np.asarray(client, dtype=int)
        strata = codes[idx] if codes is not None else np.zeros(len(idx), dtype=int)
        values, counts = np.unique(strata, return_counts=True)
        exact = test_fraction * counts
        n_test = np.floor(exact).astype(int)
        missing = int(np.floor(test_fraction * len(idx) + 0.5)) - int(n_test.sum())
        n_test[np.argsort(-(exact - n_test), kind="stable")[:missing]] += 1
        client_train, client_test = [], []
        for value, k in zip(values, n_test, strict=True):
            members = rng.permutation(idx[strata == value]).tolist()
            client_test += members[:k]
            client_train += members[k:]
        train.append(sorted(client_train))
        test.append(sorted(client_test))
    base = indices if isinstance(indices, Partition) else Partition(clients)
    params = {**base.params, "test_fraction": test_fraction, "split_seed": seed}
    return (
        Partition(train, labels, f"{base.method}/train", params),
        Partition(test, labels, f"{base.method}/test", params),
    )


def held_out_sample(labels: Sequence[Hashable] | None, size: int, n: int, seed: int) -> list[int]:
    """Sorted indices of a held-out sample of at most ``size`` of ``n`` examples: label-balanced when ``labels``
    are given (the same count of every label, as many as the rarest label allows), else uniform."""
    rng = np.random.default_rng(seed)
    if labels is None:
        return sorted(rng.permutation(n)[:size].tolist())
    codes = _encode(labels)
    counts = np.bincount(codes)
    per_label = min(size // len(counts), int(counts.min()))
    if per_label == 0:
        raise ValueError(f"{size} held-out examples cannot hold every one of {len(counts)} labels equally")
    picked: list[int] = []
    for value in range(len(counts)):
        picked += rng.permutation(np.flatnonzero(codes == value))[:per_label].tolist()
    return sorted(picked)


def _encode(labels: Sequence[Hashable]) -> np.ndarray:
    """Dense integer codes 0..L-1 of the labels, in sorted label order."""
    if len(labels) == 0:
        raise ValueError("cannot partition an empty pool")
    return np.unique(np.asarray(labels), return_inverse=True)[1].reshape(-1)


def _check_num_clients(n: int, num_clients: int) -> None:
    """Every client must be able to get at least one of the ``n`` examples."""
    if not 1 <= num_clients <= n:
        raise ValueError(f"num_clients must be in [1, {n}] for {n} examples, got {num_clients}")


def _even_sizes(n: int, num_clients: int) -> list[int]:
    """Client sizes differing by at most one."""
    _check_num_clients(n, num_clients)
    return [n // num_clients + (k < n % num_clients) for k in range(num_clients)]


class _IndexPartitioner(Partitioner):
    """flwr-datasets adapter: compute a ``Partition`` of one column once, then ``select`` each client's rows."""

    def __init__(self, num_partitions: int, partition_by: str) -> None:
        super().__init__()
        self._num_partitions = num_partitions
        self._partition_by = partition_by
        self._partition: Partition | None = None

    @property
    def num_partitions(self) -> int:
        """Number of clients."""
        return self._num_partitions

    @property
    def partition(self) -> Partition:
        """The index partition of the assigned dataset (e.g. to save with ``to_json``)."""
        if self._partition is None:
            self._partition = self._split(list(self.dataset[self._partition_by]))
        return self._partition

    def load_partition(self, partition_id: int) -> Dataset:
        """The rows of client ``partition_id``."""
        if not 0 <= partition_id < self._num_partitions:
            raise IndexError(f"partition_id must be in [0, {self._num_partitions}), got {partition_id}")
        return self.dataset.select(self.partition.clients[partition_id])

    @abstractmethod
    def _split(self, values: list[Hashable]) -> Partition:
        """Partition the examples given the column's values."""


class LabelSortedPartitioner(_IndexPartitioner):
    """``label_sorted_split`` on column ``partition_by`` of a Hugging Face dataset."""

    def __init__(self, num_partitions: int, partition_by: str, iid_fraction: float, seed: int = 0) -> None:
        super().__init__(num_partitions, partition_by)
        self._iid_fraction, self._seed = iid_fraction, seed

    def _split(self, values: list[Hashable]) -> Partition:
        return label_sorted_split(values, self._num_partitions, self._iid_fraction, self._seed)


class DirichletLabelPartitioner(_IndexPartitioner):
    """``dirichlet_split`` on column ``partition_by`` of a Hugging Face dataset."""

    def __init__(self, num_partitions: int, partition_by: str, alpha: float, seed: int = 0, min_size: int = 10) -> None:
        super().__init__(num_partitions, partition_by)
        self._alpha, self._seed, self._min_size = alpha, seed, min_size

    def _split(self, values: list[Hashable]) -> Partition:
        return dirichlet_split(values, self._num_partitions, self._alpha, self._seed, self._min_size)


class GroupPartitioner(_IndexPartitioner):
    """``group_split`` on column ``partition_by`` (e.g. title, category) of a Hugging Face dataset."""

    def __init__(self, num_partitions: int, partition_by: str, seed: int = 0) -> None:
        super().__init__(num_partitions, partition_by)
        self._seed = seed

    def _split(self, values: list[Hashable]) -> Partition:
        return group_split(values, self._num_partitions, self._seed)
