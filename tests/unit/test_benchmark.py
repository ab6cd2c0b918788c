"""The Synthesis entry point (genlib.metrics.benchmark) and the benchmark script (benchmarks/protocol.py)."""

import csv
import importlib.util
from pathlib import Path

import pytest

from genlib import metrics

ROOT = Path(__file__).resolve().parents[2]
DETERMINISTIC = ("binned_kl", "w2", "nll", "modes_covered", "on_mode", "nfe")


def _script():
    spec = importlib.util.spec_from_file_location("protocol", ROOT / "benchmarks" / "protocol.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_benchmark_is_reproducible_and_complete(tmp_cache):
    a = metrics.benchmark(["gmm", "gmm_k8"], n=5000, device="cpu")
    b = metrics.benchmark(["gmm", "gmm_k8"], n=5000, device="cpu")  # the second call loads from the cache
    assert [r["family"] for r in a] == ["gmm", "gmm_k8"]
    for ra, rb in zip(a, b, strict=True):
        assert {k: ra[k] for k in DETERMINISTIC} == {k: rb[k] for k in DETERMINISTIC}
        # a family with a log-density has every protocol field, none missing
        assert all(ra[k] is not None for k in (*DETERMINISTIC, "train_seconds", "train_steps"))
        assert ra["train_seconds"] > 0 and ra["train_seconds"] == rb["train_seconds"]


def test_benchmark_rejects_bad_input(tmp_cache):
    with pytest.raises(KeyError):
        metrics.benchmark(["no_such_family"], n=100)
    with pytest.raises(ValueError, match="names"):
        metrics.benchmark([], n=100)
    with pytest.raises(ValueError, match="n"):
        metrics.benchmark(["gmm"], n=0)


def test_benchmark_script_end_to_end(tmp_cache, tmp_path):
    """The script on a tiny configuration: two fast families, two seeds, few samples, no reference points."""
    mod = _script()
    out = tmp_path / "bench"
    assert mod.main(["--families", "gmm", "autoregressive", "--seeds", "0", "1", "--samples", "3000",
                     "--out", str(out), "--device", "cpu", "--no-references", "--name", "tiny"]) == 0
    lines = (out / "tiny.csv").read_text().splitlines()
    meta = [ln for ln in lines if ln.startswith("#")]
    assert any(ln.startswith("# device: cpu") for ln in meta) and any(ln.startswith("# commit:") for ln in meta)
    rows = list(csv.DictReader(ln for ln in lines if not ln.startswith("#")))
    assert [(r["family"], r["seed"]) for r in rows] == [("gmm", "0"), ("autoregressive", "0"), ("gmm", "1"),
                                                        ("autoregressive", "1")]
    assert all(r["binned_kl"] and r["nll"] and r["w2"] for r in rows)
    md = (out / "tiny.md").read_text()
    body = [ln for ln in md.splitlines() if ln.startswith("| gmm") or ln.startswith("| autoregressive")]
    assert len(body) == 2 and all("±" in ln for ln in body)  # mean ± spread over the two seeds
    assert "0.0099" in body[0]  # the notes' Table 2 value quoted beside the GMM row


def test_benchmark_script_on_the_second_dataset(tmp_cache, tmp_path):
    """--dataset two_moons: the two-moons recipes, scored against two moons, named after the data set."""
    mod = _script()
    out = tmp_path / "bench"
    assert mod.main(["--dataset", "two_moons", "--families", "gmm", "--samples", "5000", "--out", str(out),
                     "--device", "cpu"]) == 0
    md = (out / "two_moons.md").read_text()
    assert md.startswith("Two moons, the book's evaluation protocol")
    assert "KDE baseline" in md and "oracle" not in md and "Table 2" not in md
    rows = list(csv.DictReader(ln for ln in (out / "two_moons.csv").read_text().splitlines()
                               if not ln.startswith("#")))
    assert len(rows) == 1 and rows[0]["modes_covered"] == "2"
    assert float(rows[0]["binned_kl"]) == pytest.approx(metrics.benchmark(["gmm"], n=5000, device="cpu",
                                                                       dataset="two_moons")[0]["binned_kl"])
