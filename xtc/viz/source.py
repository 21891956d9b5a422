"""``show_source(obj)``: the real code of a function or class, highlighted, in a notebook.

Workshops should *see* the method (00_quickstart shows ``consistency_loss``), and
copying code into a markdown cell would drift from what actually runs. This reads the source
with :mod:`inspect` from the installed package, so what is shown is what trains.
"""

from __future__ import annotations

import inspect
from typing import Any


def show_source(obj: Any, display: bool = True) -> str:
    """Display the source of ``obj`` (function, class, method or module) with syntax
    highlighting through ``IPython.display.Code``, and return it as text.

    The header line names the file and first line, so readers can open it. Outside IPython
    (or with ``display=False``) nothing is drawn; the text is still returned.

    Examples:
        >>> from xtc.viz.source import show_source
        >>> show_source(show_source, display=False).splitlines()[0]
        'def show_source(obj: Any, display: bool = True) -> str:'
    """
    target = inspect.unwrap(obj) if callable(obj) else obj
    try:
        text = inspect.getsource(target)
        _, line = inspect.getsourcelines(target)
        where = f"{inspect.getsourcefile(target)}:{line}"
    except (TypeError, OSError) as exc:
        raise TypeError(f"show_source: no Python source for {obj!r} ({exc}); pass a function, "
                        f"class or module defined in a .py file") from None
    if display:
        try:
            from IPython.display import Code, Markdown
            from IPython.display import display as ipy_display
        except ImportError:  # plain Python: returning the text is all we can do
            return text
        name = getattr(target, "__qualname__", getattr(target, "__name__", repr(target)))
        ipy_display(Markdown(f"`{getattr(target, '__module__', '')}.{name}` — `{where}`"))
        ipy_display(Code(text, language="python"))
    return text
