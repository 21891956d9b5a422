"""The one error type the data package raises for problems a user can fix."""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset folder, file or option is wrong; the message names the thing and the fix."""
