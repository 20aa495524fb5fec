"""Run directories that cannot mix: checked before anything loads, resumed only with the same config.

A run directory is marked by its ``config.resolved.yaml``. A new run needs an empty (or absent) ``--out``;
``--resume`` continues a run only if its resolved config equals the new one (else the differing keys are
named); ``--overwrite`` empties an earlier run directory first (never a folder that is not a pf2lora run).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from pf2lora.checkpoint import CHECKPOINT_DIR, STATE_FILE
from pf2lora.errors import OutputError
from pf2lora.io import write_text

CONFIG_FILE = "config.resolved.yaml"


def _flatten(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            yield from _flatten(v, f"{prefix}.{k}" if prefix else str(k))
    else:
        yield prefix, tree


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two config trees."""
    a, b = dict(_flatten(old)), dict(_flatten(new))
    return sorted(k for k in a.keys() | b.keys() if a.get(k, ...) != b.get(k, ...))


def _check_writable(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out}: exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".pf2lora-write-test-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"--out {out}: not writable ({e.strerror or e})") from None


def open_run_dir(out: Path, config_text: str, *, resume: bool, overwrite: bool) -> bool:
    """Make ``out`` ready for a run of ``config_text`` (a resolved config); return whether it resumes one.

    Raises :class:`OutputError` (one line) for an unwritable path, a directory holding anything but this
    run (without ``--resume``/``--overwrite``), or ``--resume`` of a run with a different config.
    """
    if resume and overwrite:
        raise OutputError("--resume and --overwrite exclude each other")
    _check_writable(out)
    entries = [p for p in out.iterdir() if not p.name.startswith(".pf2lora-write-test-")]
    marker = out / CONFIG_FILE
    if entries and not marker.is_file():
        raise OutputError(f"--out {out}: not empty and not a pf2lora run directory; choose another folder")
    if entries and overwrite:
        for p in entries:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        entries = []
    if entries and not resume:
        raise OutputError(
            f"--out {out}: holds an earlier run; pass --resume to continue it or --overwrite to replace it"
        )
    if entries:
        try:
            old = yaml.safe_load(marker.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise OutputError(f"{marker}: unreadable ({type(e).__name__}); cannot resume") from None
        diff = config_differences(old if isinstance(old, Mapping) else {}, yaml.safe_load(config_text))
        if diff:
            shown = ", ".join(diff[:8]) + (f" and {len(diff) - 8} more" if len(diff) > 8 else "")
            raise OutputError(f"--resume: the config differs from the run in {out} at {shown}")
        return True
    write_text(marker, config_text)
    return False


def discard_new_run(out: Path, remove_dir: bool) -> None:
    """Remove what a new run wrote into ``out`` before its first checkpoint (and ``out`` itself if it created it)."""
    if any(out.rglob(f"{CHECKPOINT_DIR}/{STATE_FILE}")):
        return
    for p in out.iterdir():
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    if remove_dir:
        out.rmdir()
