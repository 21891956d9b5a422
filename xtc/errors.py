"""The errors a user can cause and fix: every one is an :class:`XtcError`.

The CLI prints an ``XtcError`` as one line ``xtc: error: ...`` and exits with code 2; any
other exception is a bug and shows its traceback. Each class keeps its old builtin base too,
so ``except ValueError`` (or ``KeyError``, ...) code written before this module still works.
This module imports nothing from xtc, so every module may import it.

Examples:
    >>> issubclass(ConfigError, XtcError) and issubclass(ConfigError, ValueError)
    True
    >>> str(UnknownNameError("unknown dataset 'x'; choose one of ['synthetic-city']"))
    "unknown dataset 'x'; choose one of ['synthetic-city']"
"""

from __future__ import annotations

__all__ = ["XtcError", "ConfigError", "DatasetError", "CheckpointError", "UnknownNameError",
           "TrainingError", "PlanError", "MissingFileError", "OutputExistsError",
           "SetupError"]


class XtcError(Exception):
    """An error the user can fix; the message names what is wrong and the fix."""


class ConfigError(XtcError, ValueError):
    """A config value or command-line option a user wrote is wrong; the message names the
    field and the fix."""


class DatasetError(XtcError, ValueError):
    """A dataset folder, file or option is wrong; the message names the thing and the fix."""


class CheckpointError(XtcError, ValueError):
    """A checkpoint that cannot be used; the message names the file and the fix."""


class UnknownNameError(XtcError, KeyError):
    """A name that no builder is registered under; the message lists the valid ones."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0]) if self.args else ""


class TrainingError(XtcError, RuntimeError, ValueError):
    """Training cannot go on (e.g. a non-finite loss); the message names step and term."""


class PlanError(XtcError, ValueError):
    """A sweep or report preset plan that cannot run: bad YAML, locked, unknown executor."""


class MissingFileError(XtcError, FileNotFoundError):
    """A path the user gave does not exist; the message says which and the fix."""


class OutputExistsError(XtcError, FileExistsError):
    """An output folder or file the user named already holds something xtc will not
    overwrite (a finished run, another run's checkpoints); the message says the fix."""


class SetupError(XtcError, RuntimeError):
    """An optional tool is missing (voila, a Jupyter kernel, submitit, Slurm binaries);
    the message names the install command."""
