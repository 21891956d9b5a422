"""Small HTML tables for notebooks (pandas is not a dependency): they render in JupyterLab
and survive nbconvert's HTML export as they are.

Examples:
    >>> "<td>0.1235</td>" in table([{"a": 0.123456}]).data
    True
"""

from __future__ import annotations

from html import escape
from typing import Mapping, Sequence

import numpy as np


def _html(rows: Sequence[Mapping], digits: int) -> str:
    columns = list(dict.fromkeys(k for row in rows for k in row))

    def cell(value):
        if isinstance(value, (float, np.floating)):
            return "nan" if not np.isfinite(value) else f"{value:.{digits}g}"
        return escape(str(value))

    head = "".join(f"<th>{escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(row.get(c, ''))}</td>" for c in columns)
                   + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def table(rows: Sequence[Mapping], digits: int = 4):
    """An HTML table of ``rows`` (list of dicts). Floats are rounded to ``digits``
    significant digits; NaN shows as "nan"."""
    from IPython.display import HTML

    return HTML(_html(rows, digits))


def config_table(cfg, base=None):
    """What differs from the defaults (:func:`xtc.config.changes`) as a short table, with the
    whole config folded away in a ``<details>`` block underneath."""
    from IPython.display import HTML

    import xtc.config

    changed = xtc.config.changes(cfg, base)
    full = [{"key": k, "value": v} for k, v in xtc.config.flatten(cfg).items()]
    short = (f"<p><b>{len(changed)} settings differ from the defaults</b> "
             f"(<code>xtc.config.Config()</code>):</p>{_html(changed, 6)}" if changed
             else "<p>Every setting is the default.</p>")
    return HTML(f"{short}<details><summary>full config ({len(full)} settings)</summary>"
                f"{_html(full, 6)}</details>")
