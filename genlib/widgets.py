"""Interactive explorers for live kernels (Binder, Colab, local Jupyter). On the static site the
notebooks show a figure grid or an animation instead; these widgets need a running kernel."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["explorer", "live_kernel"]


def live_kernel() -> bool:
    """True inside a running Jupyter kernel with a front end (where widgets can be used)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    ip = get_ipython()
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


def explorer(fn: Callable[..., object], **controls):
    """An ipywidgets explorer calling ``fn(**values)`` on every change of the controls.

    Controls are ipywidgets (sliders, dropdowns) or abbreviations accepted by ``ipywidgets.interactive``.
    Uses ``continuous_update=False`` so that each redraw happens once per change.
    """
    import ipywidgets as widgets

    if not controls:
        raise ValueError("controls: expected at least one control")
    for w in controls.values():
        if hasattr(w, "continuous_update"):
            w.continuous_update = False
    return widgets.interactive(fn, **controls)
