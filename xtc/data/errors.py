"""The one error type the data package raises for problems a user can fix (defined in
:mod:`xtc.errors`; re-exported here)."""

from __future__ import annotations

from xtc.errors import DatasetError

__all__ = ["DatasetError"]
