import json
import subprocess
import sys
import warnings

import pytest
import torch

from genlib import data, nn, train, zoo
from genlib._util import seeded

TOY_DATA = {"set": "eight_gaussians", "n": 256}


def _build(hidden):
    return nn.MLP(2, 2, hidden=hidden, depth=1)


def _train(model, x, *, seed, progress, desc, **fit):
    """A recipe's own trainer: the training loop with a loss of its own."""
    return train.fit(model, x, batch_size=64, seed=seed, progress=progress, desc=desc,
                     loss_fn=lambda m, b: (m(b) - b.flip(1)).pow(2).mean(), **fit)


@pytest.fixture
def toy_recipe():
    zoo.register("toy_test", "eight_gaussians", _build, {"hidden": 8}, TOY_DATA, {"steps": 30}, trainer=_train,
                 description="a test model")
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
    payload["checksum"] = zoo._checksum(payload["state_dict"], payload["history"])  # written so, not damaged
    torch.save(payload, path)
    with pytest.warns(UserWarning, match="non-finite"):
        m = zoo.get(toy_recipe, device="cpu", progress=False)
    assert torch.isfinite(m.net[0].weight).all()


def test_cache_key_depends_on_config_and_seed(toy_recipe):
    k0 = zoo.cache_key(toy_recipe, seed=0)
    assert zoo.cache_key(toy_recipe, seed=1) != k0
    zoo.register("toy_test", "eight_gaussians", _build, {"hidden": 16}, TOY_DATA, {"steps": 30}, trainer=_train)
    assert zoo.cache_key(toy_recipe, seed=0) != k0  # a model argument
    zoo.register("toy_test", "eight_gaussians", _build, {"hidden": 8}, TOY_DATA, {"steps": 31}, trainer=_train)
    assert zoo.cache_key(toy_recipe, seed=0) != k0  # a training setting
    zoo.register("toy_test", "eight_gaussians", _build, {"hidden": 8}, {**TOY_DATA, "n": 512}, {"steps": 30},
                 trainer=_train)
    assert zoo.cache_key(toy_recipe, seed=0) != k0  # the data
    zoo.register("toy_test", "eight_gaussians", _build, {"hidden": 8}, TOY_DATA, {"steps": 30, "desc": "label"},
                 trainer=_train, description="described anew")
    assert zoo.cache_key(toy_recipe, seed=0) == k0  # a progress label and a description are cosmetic
    zoo.register("toy_test", "eight_gaussians", _build, {"hidden": 8}, TOY_DATA, {"steps": 30},
                 trainer=lambda model, x, **settings: _train(model, x, **settings))
    assert zoo.cache_key(toy_recipe, seed=0) != k0  # another trainer


def test_toy_recipe_trains_with_its_own_trainer_on_its_data(tmp_cache, toy_recipe):
    m = zoo.get(toy_recipe, seed=3, device="cpu", progress=False)
    assert m.history.steps == 30 and len(m.history.loss) == 30 and m.history.loss[-1] < m.history.loss[0]
    # the same run by hand: the model built from seed 3, the 256 points drawn by seed 3, the trainer
    with seeded(3):
        ref = _build(8)
        _train(ref, data.eight_gaussians(256, seed=3), seed=3, progress=False, desc="", steps=30)
    for a, b in zip(m.state_dict().values(), ref.state_dict().values(), strict=True):
        assert torch.equal(a, b)


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
    """Two moons (Synthesis): every headline family again, the same recipe but for the data set (and the data
    set of the recipes it starts from)."""
    assert zoo.families("two_moons") == zoo.families() == list(zoo.HEADLINE)
    for f in zoo.HEADLINE:
        a, b = zoo.recipe(f), zoo.recipe(f, "two_moons")
        assert a.data["set"] == "eight_gaussians" and b.data == {**a.data, "set": "two_moons"}
        same = [k for k in a.content if k != "data"]
        assert [a.content[k] for k in same] == [b.content[k] for k in same] and a.content.keys() == b.content.keys()
        assert b.needs == tuple((k, "two_moons" if d == "eight_gaussians" else d, s) for k, d, s in a.needs)
        assert zoo.cache_key(f) != zoo.cache_key(f, "two_moons")
    assert zoo.recipe("gan", "two_moons").needs == (("wgan_gp", "two_moons", None),)


class _DataRequested(Exception):
    pass


def test_every_two_moons_trainer_asks_for_two_moons(tmp_cache, monkeypatch):
    """Each headline recipe's first request for data names two moons for the two-moons recipe (and the eight
    Gaussians for the headline one): the data set reaches the training of every recipe, and of the recipes it
    starts from."""
    asked = []

    def fake_toy(name, n=2000, seed=None, device=None):
        asked.append(name)
        raise _DataRequested

    monkeypatch.setattr(data, "toy", fake_toy)
    for f in zoo.HEADLINE:
        for dataset in ("two_moons", "eight_gaussians"):
            r = zoo.recipe(f, dataset)
            with pytest.raises(_DataRequested):
                zoo._train(r, r.build(), 0, torch.device("cpu"), False)
            assert asked.pop() == dataset, f
    assert not asked


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
def two_toy_recipes():
    """Two small recipes a worker process can build and train: a genlib factory by name, the "fit" trainer."""
    args = {"dim": 2, "bins": 10, "lim": 4.5, "hidden": 8, "depth": 1}
    for key, hidden, steps in (("toy_test_ar", 8, 30), ("toy_test_ar_wide", 16, 40)):
        zoo.register(key, "eight_gaussians", "autoregressive.BinnedAutoregressive", {**args, "hidden": hidden},
                     TOY_DATA, {"steps": steps, "batch_size": 64, "lr": 1e-2}, description="a test model")
    yield ["toy_test_ar", "toy_test_ar_wide"]
    for key in ("toy_test_ar", "toy_test_ar_wide"):
        zoo._REGISTRY.pop((key, "eight_gaussians"), None)


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
        assert cached.history.steps == zoo.recipe(key).fit["steps"]
        fresh = zoo.get(key, device="cpu", cache=False, progress=False)
        for a, b in zip(cached.state_dict().values(), fresh.state_dict().values(), strict=True):
            assert torch.equal(a, b)
        assert cached.history.loss == fresh.history.loss
    assert zoo.prefetch(*two_toy_recipes, threads=2, progress=False) == {}  # all cached: nothing to do


def test_prefetch_leaves_single_models_and_notebook_recipes_to_get(tmp_cache, two_toy_recipes, toy_recipe,
                                                                   monkeypatch):
    monkeypatch.setenv("GENLIB_DEVICE", "cpu")
    assert zoo.prefetch(*two_toy_recipes, threads=1, progress=False) == {}  # one thread: nothing to share
    assert zoo.prefetch(two_toy_recipes[0], threads=2, progress=False) == {}  # one model: get trains it
    # a notebook's own factory or trainer (a callable) cannot travel to a worker process
    r = zoo.recipe(two_toy_recipes[1])
    zoo.register("toy_test_local", "eight_gaussians", r.model, r.args, r.data, r.fit,
                 trainer=lambda model, x, **settings: train.fit(model, x, **settings))
    try:
        assert zoo.prefetch("toy_test_local", two_toy_recipes[0], threads=2, progress=False) == {}
        assert zoo.prefetch(toy_recipe, two_toy_recipes[0], threads=2, progress=False) == {}  # a callable model
    finally:
        zoo._REGISTRY.pop(("toy_test_local", "eight_gaussians"), None)
    assert not list(tmp_cache.glob("*.pt"))  # nothing was trained
    with pytest.raises(KeyError, match="no model 'nope'"):
        zoo.prefetch("nope", two_toy_recipes[0])


# ------------------------------------------------------------------------------------------ recipes as data


def test_every_recipe_builds_untrained_and_its_content_is_json():
    for key, dataset in zoo.models():
        r = zoo.recipe(key, dataset)
        assert (r.key, r.dataset) == (key, dataset)
        with seeded(0):
            model = r.build()
        assert isinstance(model, torch.nn.Module), (key, dataset)
        content = json.loads(json.dumps(r.content, sort_keys=True))  # JSON-ready data, as the cache key hashes it
        assert content["model"] == r.model and content["trainer"] == r.trainer in zoo.TRAINERS
        assert "desc" not in content["fit"]
        assert isinstance(r.data, dict) and r.data and isinstance(r.fit, dict)
        for need, need_dataset, seed in r.needs:  # every need is a registered recipe
            assert (need, need_dataset) in zoo.models() and (seed is None or isinstance(seed, int))
        assert r.init_from is None or r.init_from in [k for k, _, _ in r.needs]
        if r.init_into is not None:
            model.get_submodule(r.init_into)  # the submodule the needed weights load into exists
        assert len(zoo.cache_key(key, dataset)) == 20


def test_str_of_a_recipe_names_its_model_data_and_fit():
    r = zoo.recipe("cnf")
    lines = str(r).splitlines()
    assert lines[0] == f"cnf (eight_gaussians): {r.description}"
    by_label = {ln.split()[0]: ln for ln in lines[1:]}
    assert set(by_label) == {"model", "data", "fit"}  # no needs
    assert "flows.CNF(" in by_label["model"]
    assert all(f"{k}={v!r}" in by_label["model"] for k, v in r.args.items())  # the solver's steps among them
    assert by_label["data"].split(None, 1)[1] == "set='eight_gaussians'"
    assert all(f"{k}={v!r}" in by_label["fit"] for k, v in r.fit.items())  # the training steps among them
    text = str(zoo.recipe("gan"))
    assert "gan.mlp_rejection_sampler(" in text and "\n  rejection " in text
    assert "needs    wgan_gp (eight_gaussians); starts from wgan_gp's weights" in text
    assert "encode='vqvae'" in str(zoo.recipe("code_prior", "digits"))


def test_str_of_a_recipe_with_its_own_factory_and_trainer(toy_recipe):
    text = str(zoo.recipe(toy_recipe))
    assert text.startswith("toy_test (eight_gaussians): a test model")
    assert "test_zoo._build(hidden=8)" in text and "set='eight_gaussians', n=256" in text
    assert "_train" in text and "steps=30" in text


@pytest.fixture
def cleanup():
    """Registry keys a test registers, removed afterwards."""
    keys = []
    yield keys
    for k in keys:
        zoo._REGISTRY.pop(k, None)


def test_variant_merges_its_changes_and_keeps_what_the_recipe_starts_from(cleanup):
    cleanup += [("gan_test_variant", "eight_gaussians"), ("gan_test_variant", "test_set")]
    base = zoo.recipe("gan")
    v = zoo.variant("gan", "gan_test_variant", args={"quantile": 0.9}, fit={"steps": 10})
    assert zoo.recipe("gan_test_variant") is v
    assert v.args == {**base.args, "quantile": 0.9} and v.fit == {**base.fit, "steps": 10} and v.data == base.data
    assert (v.model, v.trainer, v.needs, v.init_from, v.init_into, v.description) == (
        base.model, base.trainer, base.needs, base.init_from, base.init_into, base.description)
    assert base.args["quantile"] != 0.9 and base.fit["steps"] != 10  # the recipe itself is unchanged
    changed = zoo.cache_key("gan_test_variant")
    zoo.variant("gan", "gan_test_variant")  # the same key, nothing changed
    same = zoo.cache_key("gan_test_variant")
    assert changed != same  # the changes enter the cache key
    zoo.variant("gan", "gan_test_variant", args={"quantile": 0.9}, fit={"steps": 10})
    assert zoo.cache_key("gan_test_variant") == changed
    # the needs are kept for real: a change to the generator it starts from changes the variant's key
    original = zoo._REGISTRY[("wgan_gp", "eight_gaussians")]
    try:
        zoo._REGISTRY[("wgan_gp", "eight_gaussians")] = zoo.Recipe(**{**original.__dict__,
                                                                       "fit": {**original.fit, "steps": 1}})
        assert zoo.cache_key("gan_test_variant") != changed
    finally:
        zoo._REGISTRY[("wgan_gp", "eight_gaussians")] = original
    # another data set, with a description of its own
    w = zoo.variant("gan", "gan_test_variant", new_dataset="test_set", data={"n": 500}, description="mine")
    assert zoo.recipe("gan_test_variant", "test_set") is w and w.data == {**base.data, "n": 500}
    assert w.description == "mine" and w.needs == base.needs
    with pytest.raises(KeyError, match="no model 'nope'"):
        zoo.variant("nope", "nope_variant")


def test_a_recipe_that_depends_on_itself_is_a_clear_error(cleanup, tmp_cache):
    cleanup += [("test_loop", "test_set"), ("test_loop_a", "test_set"), ("test_loop_b", "test_set")]
    zoo.register("test_loop", "test_set", "gmm.GaussianMixture", {"n_components": 2}, fit={"steps": 5},
                 trainer="em", needs=(("test_loop", "test_set", None),))
    with pytest.raises(ValueError, match="recipe 'test_loop' \\(test_set\\) depends on itself"):
        zoo.cache_key("test_loop", "test_set")
    with pytest.raises(ValueError, match="depends on itself"):
        zoo.get("test_loop", "test_set", device="cpu", progress=False)
    # a longer loop: a -> b -> a
    zoo.register("test_loop_a", "test_set", "gmm.GaussianMixture", trainer="em",
                 needs=(("test_loop_b", "test_set", None),))
    zoo.register("test_loop_b", "test_set", "gmm.GaussianMixture", trainer="em",
                 needs=(("test_loop_a", "test_set", None),))
    with pytest.raises(ValueError, match="'test_loop_a' \\(test_set\\) depends on itself"):
        zoo.cache_key("test_loop_a", "test_set")
    # the same recipe on another seed is no loop
    zoo.register("test_loop", "test_set", "gmm.GaussianMixture", trainer="em",
                 needs=(("test_loop_b", "test_set", 1),))
    zoo.register("test_loop_b", "test_set", "gmm.GaussianMixture", trainer="em")
    assert len(zoo.cache_key("test_loop", "test_set")) == 20


@pytest.mark.parametrize("needs", [(("gmm", "eight_gaussians"),), ("gmm",), [["gmm", "eight_gaussians", None]],
                                   (("gmm", "eight_gaussians", "0"),), ((1, "eight_gaussians", None),)],
                         ids=["two-fields", "a-string", "a-list", "a-string-seed", "an-int-key"])
def test_register_rejects_a_bad_needs_entry(needs):
    with pytest.raises(TypeError, match=r"needs: expected \(key, dataset, seed or None\) tuples"):
        zoo.register("test_bad", "test_set", "gmm.GaussianMixture", needs=needs)
    assert ("test_bad", "test_set") not in zoo.models()  # nothing registered


def test_register_rejects_bad_recipes(cleanup):
    cleanup.append(("test_bad", "test_set"))
    with pytest.raises(ValueError, match="init_from: 'gmm' must be one of the recipes in needs"):
        zoo.register("test_bad", "test_set", "gmm.GaussianMixture", init_from="gmm")
    with pytest.raises(ValueError, match="init_from: 'gmm' must be one of the recipes in needs"):
        zoo.register("test_bad", "test_set", "gmm.GaussianMixture", init_from="gmm",
                     needs=(("gmm_k8", "eight_gaussians", None),))
    with pytest.raises(ValueError, match="trainer: unknown value 'adam'"):
        zoo.register("test_bad", "test_set", "gmm.GaussianMixture", trainer="adam")
    with pytest.raises(TypeError, match="model: expected a factory name or a callable"):
        zoo.register("test_bad", "test_set", 3)
    with pytest.raises(TypeError, match="JSON-serialisable"):
        zoo.register("test_bad", "test_set", "gmm.GaussianMixture", fit={"callback": object()})
    assert ("test_bad", "test_set") not in zoo.models()  # nothing registered
    r = zoo.register("test_bad", "test_set", "gmm.GaussianMixture", init_from="gmm",
                     needs=(("gmm", "eight_gaussians", None),))
    assert r.data == {"set": "test_set"} and r.args == {} and r.fit == {} and r.trainer == "fit"  # the defaults


def test_prefetch_a_recipe_that_starts_from_another_registered_at_run_time(tmp_cache, two_toy_recipes, monkeypatch):
    """A worker process knows genlib's recipes and the one it trains; a recipe it starts from that was registered
    at run time (a notebook's variant) must reach it too, or the recipe be left to get."""
    monkeypatch.setenv("GENLIB_DEVICE", "cpu")
    base = zoo.recipe(two_toy_recipes[0])
    zoo.register("toy_test_dep", "eight_gaussians", base.model, base.args, base.data, {**base.fit, "steps": 10},
                 needs=((base.key, base.dataset, None),), init_from=base.key)
    try:
        zoo.prefetch("toy_test_dep", two_toy_recipes[1], threads=2, progress=False)
        cached = zoo.get("toy_test_dep", device="cpu", progress=False)
        fresh = zoo.get("toy_test_dep", device="cpu", cache=False, progress=False)
        for a, b in zip(cached.state_dict().values(), fresh.state_dict().values(), strict=True):
            assert torch.equal(a, b)
    finally:
        zoo._REGISTRY.pop(("toy_test_dep", "eight_gaussians"), None)


# ------------------------------------------------------------------------------- a cache that cannot lie


def test_a_damaged_entry_with_finite_weights_is_retrained(tmp_cache, toy_recipe):
    a = zoo.get(toy_recipe, device="cpu", progress=False)
    path = zoo.cache_path(toy_recipe)
    payload = torch.load(path, weights_only=True)
    w = payload["state_dict"]["net.0.weight"]
    w.view(torch.int32)[0, 0] ^= 1 << 20  # one flipped bit: still a finite weight
    assert torch.isfinite(w).all() and not torch.equal(w, a.net[0].weight)
    torch.save(payload, path)
    with pytest.warns(UserWarning, match="checksum does not match"):
        b = zoo.get(toy_recipe, device="cpu", progress=False)
    assert torch.equal(a.net[0].weight, b.net[0].weight)


def test_a_malformed_history_is_retrained_not_a_crash(tmp_cache, toy_recipe):
    zoo.get(toy_recipe, device="cpu", progress=False)
    path = zoo.cache_path(toy_recipe)
    payload = torch.load(path, weights_only=True)
    payload["history"] = {"loss": "not a list of numbers", "steps": None}
    payload["checksum"] = zoo._checksum(payload["state_dict"], payload["history"])
    torch.save(payload, path)
    with pytest.warns(UserWarning, match="unusable"):
        m = zoo.get(toy_recipe, device="cpu", progress=False)
    assert len(m.history.loss) == 30


def test_the_key_follows_the_code_not_its_comments(monkeypatch):
    r = zoo.recipe("flow")
    key = zoo.cache_key("flow")
    original = zoo._source

    def edited(change):
        def source(name):
            text = original(name)
            return change(text) if name == "genlib.models.flows" else text
        return source

    def rekey(change):
        monkeypatch.setattr(zoo, "_source", edited(change))
        zoo._module_code.cache_clear()
        zoo.code_fingerprint.cache_clear()
        return zoo.cache_key("flow")

    try:
        assert "genlib.models.flows" in zoo._code_modules(r)
        # a comment, a docstring and the layout change nothing
        assert rekey(lambda t: t.replace('"""A normalizing flow:', '"""A normalising flow:') + "\n# a comment\n") == key
        # code does: a changed constant in the spline couplings
        assert rekey(lambda t: t.replace("_MIN_DERIV = ", "_MIN_DERIV = 0.5 * ")) != key
        # and so does code in a module the flow imports (the solvers, through genlib.models.flows' imports)
        assert "genlib.solvers" in zoo._module_code("genlib.models.flows")[1]
    finally:
        monkeypatch.setattr(zoo, "_source", original)
        zoo._module_code.cache_clear()
        zoo.code_fingerprint.cache_clear()
    assert zoo.cache_key("flow") == key


def test_an_unwritable_cache_keeps_the_model_and_warns_once(tmp_path, monkeypatch, toy_recipe):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv("GENLIB_CACHE", str(blocker / "cache"))  # a folder below a file: never writable
    zoo._UNWRITABLE.clear()
    with pytest.warns(UserWarning, match=r"cannot write the model cache at .*a_file/cache"):
        m = zoo.get(toy_recipe, device="cpu", progress=False)
    assert len(m.history.loss) == 30
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second model trains without a second warning
        zoo.get(toy_recipe, seed=1, device="cpu", progress=False)


def test_an_empty_cache_variable_means_the_default_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("GENLIB_CACHE", "")
    assert zoo.cache_dir() == tmp_path / ".cache" / "genlib"


def test_a_folder_where_the_entry_belongs_is_survived(tmp_cache, toy_recipe):
    zoo._UNWRITABLE.clear()
    zoo.cache_path(toy_recipe).mkdir(parents=True)
    with pytest.warns(UserWarning, match="cannot write"):
        m = zoo.get(toy_recipe, device="cpu", progress=False)
    assert len(m.history.loss) == 30


def test_clear_cache_stays_inside_the_cache(tmp_cache, tmp_path):
    outside = tmp_path / "x-keep.pt"
    outside.write_text("")
    for bad in ("../x", "..", "a/b", "", "*"):
        with pytest.raises(ValueError, match="key: expected a recipe key"):
            zoo.clear_cache(bad)
    assert outside.exists()


def test_two_threads_needing_one_model_train_it_once(tmp_cache):
    import threading

    calls = []

    def counting(model, x, **settings):
        calls.append(1)
        return _train(model, x, **settings)

    zoo.register("toy_lock", "eight_gaussians", _build, {"hidden": 8}, TOY_DATA, {"steps": 30}, trainer=counting)
    try:
        out, errors = [], []

        def worker():
            try:
                out.append(zoo.get("toy_lock", device="cpu", progress=False))
            except Exception as err:  # noqa: BLE001
                errors.append(err)

        threads = [threading.Thread(target=worker) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors and len(out) == 2 and len(calls) == 1
        assert torch.equal(out[0].net[0].weight, out[1].net[0].weight)
        assert not list(tmp_cache.glob("*.tmp*"))  # no temporary file left behind
    finally:
        zoo._REGISTRY.pop(("toy_lock", "eight_gaussians"), None)


def test_convolutional_models_train_on_one_thread():
    before = torch.get_num_threads()
    conv = zoo.recipe("vqvae", "digits").build()
    mlp = zoo.recipe("flow").build()
    seen = {}
    with zoo._threads(conv):
        seen["conv"] = torch.get_num_threads()
    with zoo._threads(mlp):
        seen["mlp"] = torch.get_num_threads()
    assert seen == {"conv": 1, "mlp": before} and torch.get_num_threads() == before
