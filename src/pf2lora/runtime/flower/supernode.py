"""``flower-supernode`` with short polls, for the local federation ``pf2lora run --runtime flower`` starts.

flwr 1.41's SuperNode sleeps 3 s whenever the SuperLink has no message for it, and 0.5 s while waiting for
a reply to send (``flwr/supernode/start_client_internal.py``). A reply is pushed only on the loop's next
pass, so every exchange cost 3-6 s (measured: about 5 s per train or evaluate message on a tiny model).
This entry point runs the stock SuperNode with those sleeps capped at :data:`POLL`; its arguments are
``flower-supernode``'s. Real deployments may use either.
"""

from __future__ import annotations

import time
from typing import Any

from flwr.supernode import start_client_internal
from flwr.supernode.cli.flower_supernode import flower_supernode

from pf2lora.runtime.flower.polling import retry_pulls_sooner

#: Longest sleep of the SuperNode's polling loops (seconds).
POLL = 0.05


class _ShortSleeps:
    """The ``time`` module as the SuperNode loop sees it, with sleeps capped at :data:`POLL`."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        time.sleep(min(seconds, POLL))


if __name__ == "__main__":
    start_client_internal.time = _ShortSleeps()  # type: ignore[assignment]
    retry_pulls_sooner(start_client_internal)
    flower_supernode()
