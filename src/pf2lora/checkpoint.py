"""Checkpoints: the whole federation state of a run as one dict in ``OUT/checkpoint/state.pt``.

Written atomically (a temporary file renamed over the previous checkpoint only once complete and
fsynced), so a crash at any moment leaves either the old or the new checkpoint, never a torn one.
Loaded with ``weights_only=True``: a checkpoint holds tensors and plain values only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from pf2lora.errors import OutputError
from pf2lora.io import atomic_write

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.pt"


def checkpoint_path(run_dir: str | Path) -> Path:
    """Where the checkpoint of the run in ``run_dir`` lives."""
    return Path(run_dir) / CHECKPOINT_DIR / STATE_FILE


class Restorable(Protocol):
    """What a checkpoint restores: a runtime with ``load_state_dict``."""

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def save(run_dir: str | Path, state: dict[str, Any]) -> None:
    """Atomically replace the run's checkpoint with ``state``."""
    import torch

    atomic_write(checkpoint_path(run_dir), lambda tmp: torch.save(state, tmp))


def load(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's checkpoint, or None if it has none yet."""
    import torch

    path = checkpoint_path(run_dir)
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a foreign or damaged file: say which, never a traceback
        raise OutputError(f"{path}: not a readable pf2lora checkpoint ({type(e).__name__}: {e})") from None


def restore(run_dir: str | Path, target: Restorable, state: dict[str, Any]) -> None:
    """Put the run's checkpoint ``state`` into ``target``; one that does not fit (another run's) is an OutputError."""
    try:
        target.load_state_dict(state)
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise OutputError(f"{checkpoint_path(run_dir)}: does not fit this run ({e})") from None
