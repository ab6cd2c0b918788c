"""One plotting style for the whole book: samples against data, density heatmaps, digit grids,
trajectories, and animations that work on the static site (``to_jshtml``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import matplotlib
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ._util import check_positive_int, check_tensor, module_device  # noqa: E402

__all__ = [
    "COLORS",
    "LIM",
    "style",
    "grid",
    "scatter",
    "samples_vs_data",
    "density",
    "digits_grid",
    "trajectories",
    "animate",
    "panels",
    "unified_view",
]

LIM = 4.5
COLORS = {"data": "#9aa5b1", "model": "#1f6feb", "accent": "#d1495b", "noise": "#6c757d", "path": "#2a9d8f"}


def style() -> None:
    """Apply the book's matplotlib style (call once at the top of a notebook)."""
    matplotlib.rcParams.update({
        "figure.dpi": 100,
        "savefig.dpi": 120,
        "figure.figsize": (5, 4),
        "axes.grid": False,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.titlesize": 11,
        "axes.labelsize": 10,
        "legend.frameon": False,
        "font.size": 10,
        "image.cmap": "viridis",
        "animation.embed_limit": 40,
    })


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x)


def _square(ax, lim: float | None) -> None:
    if lim is not None:
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")


def grid(n: int = 200, lim: float = LIM, device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An n x n grid on [-lim, lim]^2: (points (n*n, 2), xs (n,), ys (n,)) for evaluating densities."""
    check_positive_int("n", n, minimum=2)
    xs = torch.linspace(-lim, lim, n, device=device)
    xx, yy = torch.meshgrid(xs, xs, indexing="xy")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], -1), xs, xs


def scatter(x, ax=None, lim: float | None = LIM, color: str | None = None, s: float = 2, alpha: float = 0.5,
            label: str | None = None, title: str | None = None, max_points: int = 5000):
    """Scatter 2-D points (at most max_points) in square axes."""
    x = _np(x)[:max_points]
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"x: expected points of shape (N, 2), got {x.shape}")
    ax = ax or plt.gca()
    ax.scatter(x[:, 0], x[:, 1], s=s, alpha=alpha, color=color or COLORS["model"], label=label, linewidths=0,
               rasterized=True)
    _square(ax, lim)
    if title:
        ax.set_title(title)
    return ax


def samples_vs_data(samples, data, ax=None, lim: float | None = LIM, title: str | None = None):
    """Model samples over the training data, in the book's colours."""
    ax = ax or plt.gca()
    scatter(data, ax, lim, color=COLORS["data"], label="data", alpha=0.4)
    scatter(samples, ax, lim, color=COLORS["model"], label="samples", alpha=0.5)
    ax.legend(loc="upper right", markerscale=4, fontsize=8)
    if title:
        ax.set_title(title)
    return ax


def density(log_prob: Callable[[torch.Tensor], torch.Tensor], ax=None, lim: float = LIM, n: int = 200,
            device=None, log: bool = True, title: str | None = None, cmap: str = "viridis", vmin: float | None = None):
    """Heatmap of a (log-)density evaluated on an n x n grid (on `device`; by default that of the model whose
    method `log_prob` is, such as ``model.log_prob``, else the CPU)."""
    owner = getattr(log_prob, "__self__", None)
    if device is None and isinstance(owner, torch.nn.Module):
        device = module_device(owner)
    pts, xs, ys = grid(n, lim, device)
    with torch.no_grad():
        lp = torch.cat([log_prob(c) for c in pts.split(20_000)])
    check_tensor("log_prob(grid)", lp, finite=False)
    z = _np(lp).reshape(n, n)
    if not log:
        z = np.exp(z)
    elif vmin is None:
        vmin = max(np.nanmax(z) - 12, np.nanmin(z[np.isfinite(z)]))
    ax = ax or plt.gca()
    im = ax.imshow(z, origin="lower", extent=(-lim, lim, -lim, lim), cmap=cmap, vmin=vmin, interpolation="nearest")
    ax.set_aspect("equal")
    if title:
        ax.set_title(title)
    return im


def digits_grid(images, nrow: int = 10, ax=None, title: str | None = None, vmax: float = 16.0):
    """A grid of 8x8 digits (N, 1, 8, 8) or (N, 8, 8) on the 0..16 scale, gray on white."""
    x = _np(images)
    if x.ndim == 4:
        x = x[:, 0]
    if x.ndim != 3 or x.shape[1:] != (8, 8):
        raise ValueError(f"images: expected shape (N, 1, 8, 8) or (N, 8, 8), got {x.shape}")
    n = x.shape[0]
    ncol = min(nrow, n)
    rows = int(np.ceil(n / ncol))
    canvas = np.zeros((rows * 9 + 1, ncol * 9 + 1))
    for i in range(n):
        r, c = divmod(i, ncol)
        canvas[1 + 9 * r: 9 + 9 * r, 1 + 9 * c: 9 + 9 * c] = x[i]
    ax = ax or plt.gca()
    ax.imshow(canvas, cmap="gray_r", vmin=0, vmax=vmax, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)
    return ax


def trajectories(traj, ax=None, lim: float | None = LIM, n_paths: int = 50, color: str | None = None,
                 start_color: str | None = None, end_color: str | None = None, title: str | None = None):
    """Paths of a sampler: traj of shape (T, N, 2); draws n_paths paths with their start and end points."""
    t = _np(traj)
    if t.ndim != 3 or t.shape[2] != 2:
        raise ValueError(f"traj: expected shape (T, N, 2), got {t.shape}")
    ax = ax or plt.gca()
    k = min(n_paths, t.shape[1])
    for i in range(k):
        ax.plot(t[:, i, 0], t[:, i, 1], color=color or COLORS["path"], lw=0.6, alpha=0.6)
    ax.scatter(t[0, :k, 0], t[0, :k, 1], s=6, color=start_color or COLORS["noise"], zorder=3, label="start")
    ax.scatter(t[-1, :k, 0], t[-1, :k, 1], s=6, color=end_color or COLORS["accent"], zorder=3, label="end")
    _square(ax, lim)
    if title:
        ax.set_title(title)
    return ax


def panels(n: int, size: float = 2.6, ncols: int | None = None):
    """A row (or grid) of n square panels: (fig, flat list of axes)."""
    check_positive_int("n", n)
    ncols = ncols or n
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    axes = list(axes.ravel())
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def animate(frames: Sequence, draw: Callable, interval: int = 200, figsize=(4, 4)):
    """Turn a sequence of frames into an HTML animation (``to_jshtml``) that plays on the static site.

    ``draw(ax, frame, i)`` draws one frame into a cleared axes. Returns an ``IPython.display.HTML``.
    """
    from IPython.display import HTML
    from matplotlib import animation

    frames = list(frames)
    if not frames:
        raise ValueError("frames: expected at least one frame")
    fig, ax = plt.subplots(figsize=figsize)

    def update(i):
        ax.clear()
        draw(ax, frames[i], i)
        return ()

    anim = animation.FuncAnimation(fig, update, frames=len(frames), interval=interval, blit=False)
    html = anim.to_jshtml(default_mode="once")
    plt.close(fig)
    return HTML(html)


# ------------------------------------------------------------------------------------- the unified view


def _polar_grid() -> list[torch.Tensor]:
    """Circles and rays of the noise plane: drawn on the left, and their images under the map in the middle."""
    circle = torch.linspace(0, 2 * math.pi, 200)
    lines = [r * torch.stack([circle.cos(), circle.sin()], 1) for r in (0.5, 1.0, 1.5, 2.0)]
    for a in torch.linspace(0, 2 * math.pi, 13)[:-1]:
        lines.append(torch.linspace(0, 2.2, 60)[:, None] * torch.stack([a.cos(), a.sin()])[None])
    return lines


def _as_map(model: torch.nn.Module):
    """The model's deterministic map, as (base label, map from our 2-D noise to the model's base, T), or None.

    Read from the model's ``base``: a Gaussian base gets our noise (in its first two coordinates when it has more),
    a uniform base the normal CDF of it, a mixture's (u, z) a fixed u beside it, a rejection sampler's (z, u) a
    fixed u after it. A decoder with output noise shows its mean (``mean_base``); a diffusion model, whose default
    sampler draws noise at every step, shows its probability-flow ODE (``sampler="ode"``)."""
    try:
        base = getattr(model, "mean_base", None) or model.base
    except AttributeError:
        return None
    parts = getattr(base, "parts", None)
    if parts is None:
        return None
    kinds = tuple(k for k, _ in parts)
    shapes = [s for _, s in parts]

    def fixed_u(z):
        return torch.rand(z.shape[0], 1, generator=torch.Generator().manual_seed(1)).to(z)

    def latent(z, dim):
        if dim > 2:  # a 2-D slice of a larger latent space
            z = torch.cat([z, torch.zeros(z.shape[0], dim - 2, dtype=z.dtype, device=z.device)], 1)
        return z

    if kinds == ("uniform",) and shapes[0] == (2,):  # uniform base (autoregressive)
        return "$u = \\Phi(z)$, uniform", torch.special.ndtr, model.transform
    if kinds == ("uniform", "normal") and shapes == [(1,), (2,)]:  # a component, then an affine map (mixtures)
        def mixture_map(z):
            return model.transform(torch.cat([fixed_u(z), z], 1).to(base._anchor))
        mixture_map.component_lines = True
        return "$k \\sim \\pi$, $z \\sim \\mathcal{N}(0, I)$", None, mixture_map
    if kinds == ("normal", "uniform") and shapes[1] == (1,):  # a map, then a random filter (rejection sampling)
        dim = shapes[0][0]

        def filtered(z):
            return model.transform(torch.cat([latent(z, dim), fixed_u(z)], 1))
        filtered.grid_map = lambda z: model.transform(torch.cat([latent(z, dim), torch.zeros_like(z[:, :1])], 1))
        label = "$z \\sim \\mathcal{N}(0, I)$" + (f" (2 of {dim} dims)" if dim > 2 else "")
        return label + ", kept if $u < a(x)$", None, filtered
    if kinds == ("normal",) and len(shapes[0]) == 2 and callable(getattr(model, "base_for", None)):
        if model.base_for(sampler="ode").shape == (2,):  # per-step noise: show the probability-flow ODE
            return "$z \\sim \\mathcal{N}(0, I)$, PF-ODE", None, lambda z: model.transform(z, sampler="ode")
        return None
    if kinds == ("normal",) and len(shapes[0]) == 1:
        dim = shapes[0][0]
        label = "$z \\sim \\mathcal{N}(0, I)$" + (f" (2 of {dim} dims)" if dim > 2 else "")
        return label, None, lambda z: model.transform(latent(z, dim))
    return None


def unified_view(models: dict[str, torch.nn.Module], data: torch.Tensor, n: int = 1500, seed: int = 0):
    """The book's one figure: for each model, its base noise (left), the image of a polar grid under its map
    T (middle), and T of the noise over the data (right), all 2-D, coloured by the angle of the noise.

    ``models`` maps a name to a trained 2-D model; a model without a deterministic map shows its samples.
    Returns the matplotlib figure.
    """
    if not isinstance(models, dict):
        raise TypeError(f"models: expected a dict of name -> model, got {type(models).__name__}")
    data = check_tensor("data", data, ndim=2, last_dim=2)
    check_positive_int("n", n)
    z = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))
    colour = ((torch.atan2(z[:, 1], z[:, 0]) + math.pi) / (2 * math.pi)).numpy()
    lines = _polar_grid()
    rows = max(len(models), 1)
    fig, axes = plt.subplots(rows, 3, figsize=(8.4, 2.8 * rows), squeeze=False)
    if not models:
        axes[0, 1].text(0.5, 0.5, "no model given", ha="center", va="center", transform=axes[0, 1].transAxes)
    for row, (name, model) in zip(axes, models.items(), strict=False):  # one row even without models
        device = module_device(model)
        found = _as_map(model)
        with torch.no_grad():
            if found is None:
                label, base, mapped = "base noise (inside the sampler)", None, []
                x = model.sample(n, generator=torch.Generator(device=device).manual_seed(seed)).float().cpu()
            else:
                label, to_base, T = found
                zz = z if to_base is None else to_base(z)
                ll = lines if to_base is None else [to_base(line) for line in lines]
                x = T(zz.to(device)).float().cpu()
                if getattr(T, "component_lines", False):  # a mixture: the grid under each component's affine map
                    mapped = [model.component_map(line.to(device), k).float().cpu()
                              for k in range(model.n_components) for line in ll[:4]]
                else:  # a filtered map shows the grid's image before its filter
                    mapped = [getattr(T, "grid_map", T)(line.to(device)).float().cpu() for line in ll]
                base = (zz, ll)
        if base is not None:
            pts, ll = base
            row[0].scatter(pts[:, 0], pts[:, 1], c=colour, cmap="hsv", s=2, linewidths=0, rasterized=True)
            for line in ll:
                row[0].plot(line[:, 0], line[:, 1], color="k", lw=0.4, alpha=0.5)
        else:
            row[0].text(0.5, 0.5, "noise drawn\ninside the sampler", ha="center", va="center",
                        transform=row[0].transAxes, fontsize=8)
        row[0].set_aspect("equal")
        row[0].set_title(label, fontsize=8)
        row[0].set_ylabel(name, fontsize=11)
        for line in mapped:
            row[1].plot(line[:, 0], line[:, 1], color="k", lw=0.5, alpha=0.6)
        if not mapped:
            row[1].text(0.5, 0.5, "stochastic sampler:\nno deterministic map", ha="center", va="center",
                        transform=row[1].transAxes, fontsize=8)
        scatter(data, row[2], color=COLORS["data"], alpha=0.3)
        if mapped:
            row[2].scatter(x[:, 0], x[:, 1], c=colour, cmap="hsv", s=2, linewidths=0, rasterized=True)
        else:
            scatter(x, row[2], s=2)
        for ax in row[1:]:
            ax.set_xlim(-LIM, LIM)
            ax.set_ylim(-LIM, LIM)
            ax.set_aspect("equal")
    axes[0, 1].set_title("the map $T_\\theta$: image of the grid")
    axes[0, 2].set_title("$T_\\theta(z)$ over the data")
    plt.tight_layout()
    return fig

