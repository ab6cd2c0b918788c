import subprocess
import sys

import pytest
import torch

from genlib import data, nn, train, zoo


def _build(config):
    return nn.MLP(2, 2, hidden=config["hidden"], depth=1)


def _train(model, config, seed, device, progress):
    x = data.eight_gaussians(256, seed=seed, device=device)
    return train.fit(model, x, steps=config["steps"], batch_size=64, seed=seed, progress=progress,
                     loss_fn=lambda m, b: (m(b) - b.flip(1)).pow(2).mean())


@pytest.fixture
def toy_recipe():
    zoo.register("toy_test", "eight_gaussians", _build, _train, {"hidden": 8, "steps": 30}, "a test model")
    yield "toy_test"
    zoo._REGISTRY.pop(("toy_test", "eight_gaussians"), None)


def test_cached_model_loads_with_identical_weights(tmp_cache, toy_recipe):
    a = zoo.get(toy_recipe, seed=0, device="cpu", progress=False)
    path = zoo.cache_path(toy_recipe, seed=0)
    assert path.exists() and path.parent == tmp_cache
    stamp = path.stat().st_mtime_ns
    b = zoo.get(toy_recipe, seed=0, device="cpu", progress=False)
    assert path.stat().st_mtime_ns == stamp  # loaded, not retrained
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb)
    assert b.history.loss == a.history.loss and not b.training


def test_training_is_deterministic_without_cache(tmp_cache, toy_recipe):
    a = zoo.get(toy_recipe, seed=1, cache=False, progress=False)
    b = zoo.get(toy_recipe, seed=1, cache=False, progress=False)
    c = zoo.get(toy_recipe, seed=2, cache=False, progress=False)
    assert torch.equal(a.net[0].weight, b.net[0].weight)
    assert not torch.equal(a.net[0].weight, c.net[0].weight)


def test_corrupted_cache_entry_is_retrained(tmp_cache, toy_recipe):
    a = zoo.get(toy_recipe, device="cpu", progress=False)
    path = zoo.cache_path(toy_recipe)
    path.write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="unusable"):
        b = zoo.get(toy_recipe, device="cpu", progress=False)
    assert torch.equal(a.net[0].weight, b.net[0].weight)
    # the retrained entry replaced the corrupt one
    assert torch.load(path, weights_only=True)["key"] == zoo.cache_key(toy_recipe)


def test_mismatched_cache_entry_is_retrained(tmp_cache, toy_recipe):
    zoo.get(toy_recipe, device="cpu", progress=False)
    path = zoo.cache_path(toy_recipe)
    payload = torch.load(path, weights_only=True)
    payload["state_dict"] = {k: torch.full_like(v, float("nan")) for k, v in payload["state_dict"].items()}
    torch.save(payload, path)
    with pytest.warns(UserWarning, match="non-finite"):
        m = zoo.get(toy_recipe, device="cpu", progress=False)
    assert torch.isfinite(m.net[0].weight).all()


def test_cache_key_depends_on_config_and_seed(toy_recipe):
    k0 = zoo.cache_key(toy_recipe, seed=0)
    assert zoo.cache_key(toy_recipe, seed=1) != k0
    zoo.register("toy_test", "eight_gaussians", _build, _train, {"hidden": 16, "steps": 30})
    assert zoo.cache_key(toy_recipe, seed=0) != k0


def test_get_on_device(tmp_cache, toy_recipe, device):
    m = zoo.get(toy_recipe, device=device, progress=False)
    assert next(m.parameters()).device.type == device.type


def test_unknown_family_lists_what_exists():
    with pytest.raises(KeyError, match="no model 'nope'"):
        zoo.get("nope")
    with pytest.raises(ValueError, match="seed"):
        zoo.get("digits_classifier", dataset="digits", seed=-2)


def test_import_genlib_is_light():
    code = ("import sys, genlib; heavy = [m for m in ('matplotlib', 'sklearn', 'ot', 'scipy', 'ipywidgets', "
            "'torchdiffeq', 'IPython') if m in sys.modules]; print(heavy); assert not heavy, heavy; "
            "genlib.data; genlib.zoo; genlib.metrics; genlib.solvers; assert 'matplotlib' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_families_are_the_headline_keys_in_book_order():
    fams = zoo.families()
    assert set(fams) <= set(zoo.HEADLINE)
    assert fams == [f for f in zoo.HEADLINE if f in fams]
    assert ("digits_classifier", "digits") in zoo.models("digits")
    assert "digits_classifier" not in zoo.families("digits")


def test_second_dataset_repeats_every_headline_recipe():
    """Two moons (Synthesis): every headline family again, the same configuration but for the data set."""
    assert zoo.families("two_moons") == zoo.families() == list(zoo.HEADLINE)
    for f in zoo.HEADLINE:
        a, b = zoo.recipe(f).config, zoo.recipe(f, "two_moons").config
        assert b["data"] == "two_moons"
        assert {k: v for k, v in a.items() if k not in ("data", "desc")} == \
            {k: v for k, v in b.items() if k not in ("data", "desc")}
        assert zoo.cache_key(f) != zoo.cache_key(f, "two_moons")


class _DataRequested(Exception):
    pass


def test_every_two_moons_trainer_asks_for_two_moons(monkeypatch):
    """Each headline trainer's first request for data names two moons for the two-moons recipe (and the eight
    Gaussians for the headline one): the data key reaches every trainer."""
    asked = []

    def fake_toy(name, n=2000, seed=None, device=None):
        asked.append(name)
        raise _DataRequested

    monkeypatch.setattr(data, "toy", fake_toy)
    for f in zoo.HEADLINE:
        for dataset in ("two_moons", "eight_gaussians"):
            r = zoo.recipe(f, dataset)
            with pytest.raises(_DataRequested):
                r.train(r.build(dict(r.config)), dict(r.config), 0, torch.device("cpu"), False)
            assert asked.pop() == dataset, f


def test_two_moons_recipe_trains_on_two_moons(tmp_cache):
    """The GMM recipe on two moons: its training set is two moons, and it scores far better there than on the
    eight Gaussians (so the data key reaches the trainer)."""
    from genlib import metrics

    m = zoo.get("gmm", dataset="two_moons", device="cpu", progress=False)
    x = m.sample(20_000, generator=torch.Generator().manual_seed(0))
    assert metrics.binned_kl(x, dataset="two_moons") < 0.1 < 1.0 < metrics.binned_kl(x)


def test_get_trains_even_inside_no_grad(tmp_cache):
    """A model trained on first use from inside torch.no_grad() (say, a metric's lazy classifier) still trains."""
    with torch.no_grad():
        m = zoo.get("gmm_k8", device="cpu", progress=False)  # EM: no gradients, must not care
        clf = zoo.get("digits_classifier", dataset="digits", device="cpu", progress=False)
    assert m.history.steps > 0 and clf.history.loss[-1] < clf.history.loss[0]


@pytest.fixture
def two_toy_recipes(toy_recipe):
    zoo.register("toy_test_wide", "eight_gaussians", _build, _train, {"hidden": 16, "steps": 40}, "a test model")
    yield [toy_recipe, "toy_test_wide"]
    zoo._REGISTRY.pop(("toy_test_wide", "eight_gaussians"), None)


def test_prefetch_trains_missing_models_in_workers_with_the_weights_of_get(tmp_cache, two_toy_recipes, monkeypatch):
    monkeypatch.setenv("GENLIB_DEVICE", "cpu")
    trained = zoo.prefetch(*two_toy_recipes, threads=2, progress=False)
    assert sorted(trained) == [f"{k} (eight_gaussians)" for k in sorted(two_toy_recipes)]
    assert all(s > 0 for s in trained.values())
    for key in two_toy_recipes:
        path = zoo.cache_path(key)
        assert path.exists()
        stamp = path.stat().st_mtime_ns
        cached = zoo.get(key, device="cpu", progress=False)
        assert path.stat().st_mtime_ns == stamp  # loaded, not retrained
        fresh = zoo.get(key, device="cpu", cache=False, progress=False)
        for a, b in zip(cached.state_dict().values(), fresh.state_dict().values(), strict=True):
            assert torch.equal(a, b)
        assert cached.history.loss == fresh.history.loss
    assert zoo.prefetch(*two_toy_recipes, threads=2, progress=False) == {}  # all cached: nothing to do


def test_prefetch_leaves_single_models_and_notebook_recipes_to_get(tmp_cache, two_toy_recipes, monkeypatch):
    monkeypatch.setenv("GENLIB_DEVICE", "cpu")
    assert zoo.prefetch(*two_toy_recipes, threads=1, progress=False) == {}  # one thread: nothing to share
    assert zoo.prefetch(two_toy_recipes[0], threads=2, progress=False) == {}  # one model: get trains it
    zoo.register("toy_test_local", "eight_gaussians", lambda c: _build(c), _train, {"hidden": 8, "steps": 30})
    try:  # a lambda cannot travel to a worker process
        assert zoo.prefetch("toy_test_local", two_toy_recipes[0], threads=2, progress=False) == {}
    finally:
        zoo._REGISTRY.pop(("toy_test_local", "eight_gaussians"), None)
    assert not list(tmp_cache.glob("*.pt"))  # nothing was trained
    with pytest.raises(KeyError, match="no model 'nope'"):
        zoo.prefetch("nope", two_toy_recipes[0])
