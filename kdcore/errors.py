"""The common type of the errors kdcore raises for bad user input.

:class:`UserInputError` is a ``ValueError``: a wrong argument, file, manifest, checkpoint or
resume request, whose message says what to change. The ``kdcore`` command line prints these
as one ``kdcore: error:`` line (exit 2); every other exception is an internal error and keeps
its traceback. Subclasses: ``kdcore.cli.CLIError``, ``kdcore.data.AudioReadError``,
``kdcore.data.ManifestError``, ``kdcore.engine.CacheMismatchError``,
``kdcore.checkpoints.CheckpointError``, ``kdcore._backends.BackendUnavailableError`` and the
engine's refusal to resume a planned schedule with another ``epochs``.
"""

from __future__ import annotations


class UserInputError(ValueError):
    """Bad user input (an argument, file or resume request); the message names it."""
