"""Progress bars (tqdm) on a terminal or in a notebook; silent otherwise (logs, CI, tests).

:func:`progress_bar` gives a ``tqdm.auto`` bar, so it renders as a widget in Jupyter and as one
rewritten line on a terminal; training, analysis and import all use it.
"""

from __future__ import annotations

import os
import sys
import warnings

__all__ = ["progress_bar", "default_enabled"]


def _in_jupyter_kernel() -> bool:
    """True inside a Jupyter kernel (notebook, lab, VS Code), where stderr is no terminal."""
    ipython = sys.modules.get("IPython")
    if ipython is None or "ipykernel" not in sys.modules:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:  # a half-initialised IPython: no kernel to draw in
        return False
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def default_enabled() -> bool:
    """Whether a progress display is shown when the caller did not say.

    Shown when stderr is a terminal or inside a Jupyter kernel; never under pytest
    (``PYTEST_CURRENT_TEST`` is set, also in the kernels of notebook tests), so test logs stay
    clean even with ``pytest -s``.
    """
    if "PYTEST_CURRENT_TEST" in os.environ:
        return False
    try:
        tty = sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        tty = False
    return tty or _in_jupyter_kernel()


def _tqdm_class():
    # Imported on first use, not at ckptlab import: tqdm.auto picks the notebook or the
    # terminal bar when it is imported. Without ipywidgets it falls back to the terminal bar
    # and warns once; that fallback is fine for us, so the warning is dropped.
    from tqdm.std import TqdmWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TqdmWarning)
        from tqdm.auto import tqdm
    return tqdm


def progress_bar(
    total: int | None,
    *,
    enabled: bool | None = None,
    desc: str | None = None,
    unit: str = "it",
    leave: bool = True,
):
    """A tqdm progress bar (``tqdm.auto``: a widget in notebooks, one line on a terminal).

    Parameters
    ----------
    total : int or None
        Number of expected iterations (None: unknown, the bar shows a count and a rate).
    enabled : bool, optional
        Show the bar. By default only when stderr is a terminal or inside a Jupyter kernel,
        and never under pytest (see :func:`default_enabled`).
    desc : str, optional
        Text shown before the bar.
    unit : str, default "it"
        Name of one iteration (``"ckpt"``, ``"block"``, ...).
    leave : bool, default True
        Keep the finished bar on screen.

    Returns
    -------
    tqdm.tqdm
        Use ``update(n)``, ``set_postfix_str(text)`` and ``close()`` (or ``with``). A disabled
        bar accepts the same calls and draws nothing.
    """
    show = default_enabled() if enabled is None else bool(enabled)
    return _tqdm_class()(
        total=total, desc=desc, unit=unit, leave=leave, disable=not show,
        dynamic_ncols=True, mininterval=0.2, file=sys.stderr,
    )
