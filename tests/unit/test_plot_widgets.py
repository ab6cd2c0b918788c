import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from genlib import data, plot, widgets  # noqa: E402


def test_grid_covers_the_square():
    pts, xs, ys = plot.grid(11, lim=2.0)
    assert pts.shape == (121, 2) and xs[0] == -2 and xs[-1] == 2
    assert torch.equal(pts.min(0).values, torch.tensor([-2.0, -2.0]))


def test_density_heatmap_shows_the_modes():
    mix = data.eight_gaussians_density()
    fig, ax = plt.subplots()
    im = plot.density(lambda x: mix.log_prob(x.double()), ax=ax, n=90)
    z = im.get_array()
    assert z.shape == (90, 90)
    # brightest pixel at a mode (radius 2 sqrt 2), darkest far from all modes
    i, j = np.unravel_index(np.argmax(z), z.shape)
    xs = np.linspace(-4.5, 4.5, 90)
    assert abs(np.hypot(xs[j], xs[i]) - 2 * np.sqrt(2)) < 0.3
    plt.close(fig)


def test_digits_grid_lays_out_images():
    fig, ax = plt.subplots()
    plot.digits_grid(torch.ones(12, 1, 8, 8) * 16, nrow=5, ax=ax)
    canvas = ax.images[0].get_array()
    assert canvas.shape == (3 * 9 + 1, 5 * 9 + 1)
    assert canvas[1:9, 1:9].min() == 16 and canvas[0].max() == 0
    with pytest.raises(ValueError, match="images: expected shape"):
        plot.digits_grid(torch.zeros(3, 7, 7))
    plt.close(fig)


def test_scatter_and_trajectories_validate_shapes():
    with pytest.raises(ValueError, match=r"x: expected points of shape \(N, 2\)"):
        plot.scatter(torch.zeros(5, 3))
    with pytest.raises(ValueError, match=r"traj: expected shape \(T, N, 2\)"):
        plot.trajectories(torch.zeros(5, 2))
    fig, ax = plt.subplots()
    plot.trajectories(torch.randn(4, 10, 2), ax=ax, n_paths=3)
    assert len(ax.lines) == 3
    plt.close(fig)


def test_animate_returns_playable_html():
    html = plot.animate([0, 1, 2], lambda ax, f, i: ax.plot([0, f], [0, f]))
    assert "<script" in html.data and html.data.count("data:image/png;base64") >= 3
    with pytest.raises(ValueError, match="frames: expected at least one frame"):
        plot.animate([], lambda ax, f, i: None)


def test_explorer_calls_back_with_control_values():
    import ipywidgets as w

    seen = []
    ui = widgets.explorer(lambda k: seen.append(k), k=w.IntSlider(value=3, min=1, max=5))
    ui.children[0].value = 4
    assert seen[-1] == 4 and not ui.children[0].continuous_update
    with pytest.raises(ValueError, match="controls"):
        widgets.explorer(lambda: None)


def test_unified_view_draws_one_row_per_model():
    from genlib.models.gmm import GaussianMixture

    gmm = GaussianMixture(2, dim=2)
    gmm.set_parameters(torch.tensor([0.5, 0.5]), torch.tensor([[-2.0, 0.0], [2.0, 0.0]]), torch.eye(2).repeat(2, 1, 1))
    x = data.eight_gaussians(200, seed=0)
    fig = plot.unified_view({"a": gmm, "b": gmm}, x, n=300)
    assert len(fig.axes) == 6
    # the right column holds the mapped noise over the data: points lie near the two means
    pts = fig.axes[2].collections[-1].get_offsets()
    assert len(pts) == 300 and abs(abs(pts[:, 0]).mean() - 2.0) < 0.3
    with pytest.raises(TypeError, match="models"):
        plot.unified_view([gmm], x)
    plt.close("all")


def test_unified_view_of_a_filtered_map():
    """A rejection sampler: the middle panel shows its generator's grid image (before the filter), the right
    panel only the kept points (about the acceptance rate of the noise)."""
    from genlib.models import gan

    g = gan.GAN(torch.nn.Identity(), torch.nn.Linear(2, 1), latent_dim=2, data_shape=(2,))
    sampler = gan.RejectionSampler(g, torch.nn.Linear(2, 1))
    with torch.no_grad():  # log r(u) = -u_0: the filter keeps points on the left
        sampler.ratio.net.weight.copy_(torch.tensor([[-1.0, 0.0]]))
        sampler.ratio.net.bias.zero_()
    sampler.calibrate(5000)
    fig = plot.unified_view({"rejection": sampler}, data.eight_gaussians(200, seed=0), n=2000)
    grid_lines = fig.axes[1].lines
    assert grid_lines and all(not np.isnan(line.get_xydata()).any() for line in grid_lines)  # the whole grid
    kept = fig.axes[2].collections[-1].get_offsets()
    kept = kept[~np.isnan(np.asarray(kept)).any(1)]
    assert abs(len(kept) / 2000 - float(sampler.acceptance_rate)) < 0.05
    assert np.asarray(kept)[:, 0].mean() < -0.3  # the kept points lean to the left
    plt.close("all")
