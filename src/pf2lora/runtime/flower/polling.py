"""Shorter waits in flwr 1.41's transport, for pf2lora's own Flower processes.

flwr pulls a message's objects with retries after 1 s, 2 s, 4 s, ... when they are not there yet
(``PULL_INITIAL_BACKOFF`` in ``flwr/supercore/constant.py``), and they rarely are on the first try: on a
tiny model each train or evaluate exchange took 4-5 s of which well under 1 s was work (measured with
``pf2lora run ... --runtime flower``). :func:`retry_pulls_sooner` makes a flwr module that imported
``pull_objects``/``pull_and_inflate_object_from_tree`` retry after 20 ms, doubling up to 250 ms.
"""

from __future__ import annotations

import functools
from types import ModuleType

#: First retry of a pull of an object that is not there yet, and the cap of its doubling (seconds).
INITIAL_BACKOFF, BACKOFF_CAP = 0.02, 0.25


def retry_pulls_sooner(*modules: ModuleType) -> None:
    """Rebind ``modules``' object-pull functions to ones with short retry backoffs (idempotent)."""
    for module in modules:
        for name in ("pull_objects", "pull_and_inflate_object_from_tree"):
            fn = getattr(module, name, None)
            if fn is not None and not isinstance(fn, functools.partial):
                setattr(module, name, functools.partial(fn, initial_backoff=INITIAL_BACKOFF, backoff_cap=BACKOFF_CAP))
