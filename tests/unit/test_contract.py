"""The model contract (genlib.models.base) across the whole zoo, the zoo's cache keys and random state, and
counting network evaluations from outside.

Every registered recipe is built untrained (cheap) and checked: it has a base, ``sample`` is ``transform`` of a
base draw draw for draw, its samples have the data set's shape, it has ``log_prob`` exactly when its family has
a density, and it is tied to no device."""

import itertools

import pytest
import torch

from genlib import metrics, zoo
from genlib._util import seeded
from genlib.models import autoregressive, diffusion, flow_matching, flows, gan, gmm, vae
from genlib.models.base import Generative, Latent

N = 4
SKIP = {("digits_classifier", "digits")}  # an evaluation network, not a generative model
RECIPES = [k for k in zoo.models() if k not in SKIP]

WITH_DENSITY = (gmm.GaussianMixture, flows.Flow, flows.CNF, diffusion.Diffusion, flow_matching.FlowMatching,
                autoregressive.BinnedAutoregressive, autoregressive.PixelCNN, autoregressive.CausalTransformer,
                autoregressive.CodePrior)
WITHOUT_DENSITY = (vae.VAE, vae.Autoencoder, vae.VQVAE, gan.GAN, gan.RejectionSampler, Latent)


def _build(key: str, dataset: str) -> Generative:
    """The recipe's model, untrained (weights from seed 0), made able to sample."""
    r = zoo.recipe(key, dataset)
    with seeded(0):
        m = r.build()
        if key == "gan":  # a rejection sampler needs its cap before it can sample
            m.calibrate(n=2000, generator=torch.Generator().manual_seed(1))
        if (key, dataset) == ("vqvae", "digits"):  # a VQ-VAE samples only through a prior over its codes
            p = zoo.recipe("code_prior", "digits")
            m.attach_prior(p.build())
    return m.eval()


def _expected(key: str, dataset: str, n: int):
    """(shape, dtype) of n samples; shape None for variable-length token sequences (n, L)."""
    if dataset == "names":
        return None, torch.long
    if key == "code_prior":
        return (n, 4, 4), torch.long
    if dataset == "digits":
        return (n, 1, 8, 8), torch.float32
    if dataset.startswith("eight_gaussians") or dataset == "two_moons":
        return (n, 2), torch.float32
    raise AssertionError(f"a recipe on a data set this test does not know: {dataset!r}; add its sample shape")


def _assert_same(x: torch.Tensor, y: torch.Tensor) -> None:
    """Bit for bit (NaN where both are NaN)."""
    assert x.dtype == y.dtype and x.shape == y.shape
    if x.is_floating_point():
        torch.testing.assert_close(x, y, equal_nan=True, rtol=0, atol=0)
    else:
        assert torch.equal(x, y)


def _tensors(out):
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _tensors(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _tensors(o)]
    return []


def _model_device(m: torch.nn.Module) -> torch.device:
    devices = {t.device for t in itertools.chain(m.parameters(), m.buffers())}
    assert len(devices) == 1, devices  # one model, one device
    return devices.pop()


def _check_draw_for_draw(m: Generative, gen_device: str = "cpu") -> torch.Tensor:
    """sample(n, g) == transform(base.sample(n, g)), or for a rejection sampler: the first n kept rows of
    transform over the batches of proposals it draws from g. Returns the samples."""
    def g():
        return torch.Generator(device=gen_device).manual_seed(0)

    with torch.no_grad():
        if not isinstance(m, gan.RejectionSampler):
            x = m.sample(N, generator=g())
            _assert_same(x, m.transform(m.base.sample(N, g())))
            return x
        # transform is the sampler as a map of one proposal (z, u): G(z) if kept, a row of NaN if rejected
        noise = m.base.sample(64, g())
        noise[:, -1] = torch.linspace(0, 1, 64, device=noise.device)  # u from 0 (always kept) to 1 (never kept)
        xz = m.transform(noise)
        z, u = m.base.split(noise)
        kept = u[:, 0] < m.accept_probability(m.gan.transform(z))
        assert 0 < int(kept.sum()) < 64
        _assert_same(xz[kept], m.gan.transform(z[kept]))
        assert bool(xz[~kept].isnan().all())
        # sample(n) gathers the kept rows of transform over successive batches of base draws from its generator
        draws = []
        base_sample = m.base.sample

        def recording(k, generator=None):
            draws.append(base_sample(k, generator))
            return draws[-1]

        m.base.sample = recording
        try:
            x = m.sample(N, generator=g())
        finally:
            del m.base.sample
        replay = g()
        for d in draws:
            _assert_same(d, m.base.sample(d.shape[0], replay))
        proposals = torch.cat([m.transform(d) for d in draws])
        _assert_same(x, proposals[torch.isfinite(proposals).flatten(1).all(1)][:N])
        return x


@pytest.mark.parametrize("key,dataset", RECIPES, ids=[f"{k}-{d}" for k, d in RECIPES])
def test_every_zoo_model_keeps_the_contract(key, dataset):
    m = _build(key, dataset)
    assert isinstance(m, Generative)
    assert callable(getattr(m.base, "sample", None))
    x = _check_draw_for_draw(m)
    # the data set's shape
    shape, dtype = _expected(key, dataset, N)
    assert x.dtype == dtype, (x.dtype, dtype)
    if shape is None:  # token sequences: n rows, each starting with the start token
        assert x.ndim == 2 and x.shape[0] == N and 1 < x.shape[1] <= m.block_size + 1
        assert bool((x[:, 0] == m.bos).all())
    else:
        assert tuple(x.shape) == shape, (tuple(x.shape), shape)
    if dataset == "digits" and key != "code_prior":  # images in the data set's units: levels 0..16
        assert bool(((x >= 0) & (x <= 16)).all()), (float(x.min()), float(x.max()))
    # log_prob exactly where the family has a density
    assert isinstance(m, WITH_DENSITY) != isinstance(m, WITHOUT_DENSITY), type(m).__name__
    assert hasattr(m, "log_prob") == isinstance(m, WITH_DENSITY), type(m).__name__
    # nothing on a fixed device: base draws and samples live where the model's parameters and buffers live
    dev = _model_device(m)
    assert m.base.sample(2).device == dev
    assert all(t.device == dev for t in _tensors(x))
    assert all(t.device == dev for t in _tensors(m.sample(2)))
    if torch.cuda.is_available():
        m.to("cuda")
        if isinstance(m, vae.VQVAE):
            m.prior.to("cuda")  # an attached prior is not a submodule
        assert _model_device(m).type == "cuda" and m.base.sample(2).device.type == "cuda"
        for gen_device in ("cpu", "cuda"):
            xc = _check_draw_for_draw(m, gen_device)
            assert all(t.device.type == "cuda" for t in _tensors(xc))
        assert all(t.device.type == "cuda" for t in _tensors(m.sample(2)))


def test_every_headline_family_and_data_set_is_covered():
    """The contract test runs on every registered recipe, each family's headline model among them."""
    for dataset in ("eight_gaussians", "two_moons"):
        assert set(itertools.product(zoo.HEADLINE, [dataset])) <= set(RECIPES)
    assert {type(_build(k, d)) for k, d in RECIPES} == set(WITH_DENSITY) | set(WITHOUT_DENSITY)


# ------------------------------------------------------------------------------------------- cache keys


@pytest.fixture
def temporary_recipes():
    """Tiny recipes registered by a test on the data set 'test_set' (a binned autoregressive model, 256 points
    of the eight Gaussians, the one training loop), removed afterwards."""
    names = []

    def add(name, bins=10, steps=20, desc="", description="", needs=()):
        names.append(name)
        return zoo.register(name, "test_set", "autoregressive.BinnedAutoregressive",
                            {"dim": 2, "bins": bins, "hidden": 8, "depth": 1}, {"set": "eight_gaussians", "n": 256},
                            {"steps": steps, "batch_size": 64, "desc": desc}, needs=needs, description=description)

    yield add
    for name in names:
        zoo._REGISTRY.pop((name, "test_set"), None)


def _register_like(r: zoo.Recipe, **changes) -> zoo.Recipe:
    """Register recipe r again with some fields changed."""
    fields = {"args": r.args, "data": r.data, "fit": r.fit, "trainer": r.trainer, "needs": r.needs,
              "init_from": r.init_from, "init_into": r.init_into, "description": r.description, **changes}
    return zoo.register(r.key, r.dataset, r.model, **fields)


def test_a_base_recipe_changes_its_dependants_cache_keys(temporary_recipes):
    temporary_recipes("test_base", desc="base", description="a base")
    needs = (("test_base", "test_set", None),)
    temporary_recipes("test_dep", bins=12, desc="dependant", description="a dependant", needs=needs)
    key = zoo.cache_key("test_dep", "test_set")
    base_key = zoo.cache_key("test_base", "test_set")
    # cosmetic changes (a progress label, a description) change no key
    temporary_recipes("test_base", desc="renamed", description="described anew")
    temporary_recipes("test_dep", bins=12, desc="renamed too", description="another description", needs=needs)
    assert zoo.cache_key("test_base", "test_set") == base_key and zoo.cache_key("test_dep", "test_set") == key
    assert "desc" not in zoo.recipe("test_base", "test_set").content["fit"]
    # retraining the base differently invalidates the dependant, whose own recipe did not change
    temporary_recipes("test_base", steps=21)
    assert zoo.cache_key("test_base", "test_set") != base_key
    assert zoo.cache_key("test_dep", "test_set") != key
    temporary_recipes("test_base", bins=11)  # so does another model argument of the base
    assert zoo.cache_key("test_dep", "test_set") != key
    temporary_recipes("test_base")  # back to the first base: back to the first key
    assert zoo.cache_key("test_dep", "test_set") == key
    # the dependant's seed reaches its base (needs with seed None: the same seed) ...
    assert zoo.cache_key("test_dep", "test_set", seed=1) != key
    # ... unless the need fixes the base's seed
    temporary_recipes("test_dep", bins=12, needs=(("test_base", "test_set", 0),))
    fixed = zoo.cache_key("test_dep", "test_set", seed=1)
    temporary_recipes("test_base", steps=21)
    assert zoo.cache_key("test_dep", "test_set", seed=1) != fixed


def test_reflow_key_depends_on_the_flow_matching_recipe():
    name = ("flow_matching", "eight_gaussians")
    original = zoo._REGISTRY[name]
    keys = {k: zoo.cache_key(*k) for k in (("reflow", "eight_gaussians"), ("ot_cfm", "eight_gaussians"))}
    try:
        _register_like(original, fit={**original.fit, "desc": "cosmetic"}, description="a new description")
        assert zoo.cache_key("reflow") == keys[("reflow", "eight_gaussians")]
        _register_like(original, fit={**original.fit, "steps": original.fit["steps"] + 1})
        assert zoo.cache_key("reflow") != keys[("reflow", "eight_gaussians")]
        assert zoo.cache_key("ot_cfm") == keys[("ot_cfm", "eight_gaussians")]  # a model that does not start from it
    finally:
        zoo._REGISTRY[name] = original
    assert zoo.cache_key("reflow") == keys[("reflow", "eight_gaussians")]


def test_every_declared_need_enters_the_dependants_key():
    """Each real recipe that starts from another (needs) changes its key when that one's recipe changes."""
    dependants = [(k, r) for k, r in zoo._REGISTRY.items() if r.needs]
    assert {("reflow", "eight_gaussians"), ("gan", "eight_gaussians"), ("code_prior", "digits"),
            ("flow_matching_latent", "digits")} <= {k for k, _ in dependants}
    for key, r in dependants:
        before = zoo.cache_key(*key)
        for need, dataset, _ in r.needs:
            original = zoo._REGISTRY[(need, dataset)]
            try:
                for changes in ({"fit": {**original.fit, "_changed": 1}},
                                {"args": {**original.args, "_changed": 1}}):
                    _register_like(original, **changes)
                    assert zoo.cache_key(*key) != before, (key, need, changes)
            finally:
                zoo._REGISTRY[(need, dataset)] = original
        assert zoo.cache_key(*key) == before


# ------------------------------------------------------------------------------------------ random state


def test_get_leaves_the_global_random_state_alone_warm_or_cold(tmp_cache, temporary_recipes):
    temporary_recipes("test_rng", bins=10, steps=20)
    torch.manual_seed(123)
    reference = torch.rand(5)
    torch.manual_seed(123)
    cold = zoo.get("test_rng", "test_set", device="cpu", progress=False)  # trains (builds from the global stream)
    after_cold = torch.rand(5)
    path = zoo.cache_path("test_rng", "test_set")
    assert path.exists() and cold.history.steps == 20
    stamp = path.stat().st_mtime_ns
    torch.manual_seed(123)
    warm = zoo.get("test_rng", "test_set", device="cpu", progress=False)  # loads (builds, then loads weights)
    after_warm = torch.rand(5)
    assert path.stat().st_mtime_ns == stamp  # loaded, not retrained
    assert torch.equal(after_cold, reference) and torch.equal(after_warm, reference)
    a, b = cold.state_dict(), warm.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if torch.cuda.is_available():  # the CUDA generator too, for a model trained and loaded on the GPU
        for _ in range(2):
            state = torch.cuda.get_rng_state()
            zoo.get("test_rng", "test_set", seed=1, device="cuda", progress=False)
            assert torch.equal(torch.cuda.get_rng_state(), state)


# -------------------------------------------------------------------------------------- network evaluations


def test_count_evaluations_counts_each_networks_passes():
    torch.manual_seed(0)
    flow = flows.coupling_flow(2, n_layers=4, hidden=8)
    with metrics.count_evaluations(flow) as flow_count:
        flow.sample(10)
    assert flow_count.per_sample(10) == 4 == flow.n_networks  # one pass through each coupling network
    cnf = flows.CNF(2, hidden=8, depth=1, steps=5, method="rk4")
    with torch.no_grad(), metrics.count_evaluations(cnf) as count:
        cnf.sample(10)
    assert count.per_sample(10) == 20  # 5 RK4 steps of 4 evaluations
    with torch.no_grad(), metrics.count_evaluations(cnf) as count:
        cnf.sample(10, steps=3)  # options reach the map
        cnf.transform(torch.zeros(10, 2), method="euler", steps=2)  # and every call in the block is counted
    assert count.calls == 12 + 2 and count.per_sample(10) == 14
    mixture = gmm.GaussianMixture(3)
    with metrics.count_evaluations(mixture) as count:
        mixture.sample(10)
    assert count.per_sample(10) == 0 and count.calls == 0  # no network at all
    flow.sample(10)  # outside the block nothing is counted any more
    assert flow_count.calls == 4 and flow_count.per_sample(10) == 4
    assert metrics.sampling_cost(flow, n=10)["nfe"] == 4 and metrics.sampling_cost(mixture, n=10)["nfe"] == 0
