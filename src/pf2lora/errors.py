"""Errors a user can cause and fix: the CLI prints each as one ``error:`` line (a traceback only with ``--debug``).

Everything a user feeds in — config files, ``--set`` values, data files, model names, output folders —
is checked up front and raised as an :class:`InputError` subclass whose message names the field, file
(and line) at fault. Anything else escaping the CLI is a pf2lora bug.
"""

from __future__ import annotations


class InputError(ValueError):
    """A problem with something the user supplied, stated in one line that names it."""


class ConfigError(InputError):
    """A config problem, stated in one line that names the field or file."""


class DataError(InputError):
    """A data file that cannot be read as its dataset, named with the file (and line, where it applies)."""


class OutputError(InputError):
    """An output directory that cannot be used as asked (not writable, holds another run, ...)."""


class DivergenceError(RuntimeError):
    """Training produced a non-finite loss or update; the message names algorithm, round and client."""


class FederationError(RuntimeError):
    """Too few clients took part in a round (nodes down or unreachable); the run stops with its last checkpoint."""


class WorkerDied(RuntimeError):
    """A ``--jobs`` worker process ended without reporting its run (killed by a signal or out of memory)."""
