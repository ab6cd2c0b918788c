"""genlib as a reader installs it: the wheel and the sdist build, the wheel installs into a fresh virtual
environment outside the checkout, and the README's Python example runs there on the installed package,
importing nothing that genlib's declared dependencies do not bring.

Runs after the notebooks (``make test``), so the README example loads its model from the warm cache."""

import importlib.metadata
import json
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README.md has no Python example"
    return blocks[0]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--wheel", "--sdist", "--outdir", str(out),
                    str(ROOT)], check=True, capture_output=True, text=True)
    return out


def test_wheel_and_sdist_build_with_the_package_and_its_name(built):
    wheels, sdists = list(built.glob("*.whl")), list(built.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1
    assert wheels[0].name.startswith("genbook_genlib-")  # the distribution's own name, not PyPI's "genlib"
    import zipfile

    names = zipfile.ZipFile(wheels[0]).namelist()
    assert "genlib/models/base.py" in names and "genlib/zoo.py" in names
    assert not any(n.startswith(("tests/", "book/", "benchmarks/")) for n in names)


def test_the_readme_example_runs_on_the_installed_wheel(built, tmp_path):
    env_dir = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # the dependencies come from this environment's site-packages, as a plain path (its .pth files, the
    # checkout's editable install among them, are not run), so only the installed wheel provides genlib
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheel = next(built.glob("*.whl"))
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    script = tmp_path / "example.py"
    script.write_text(_readme_example() + "\nimport json, sys\nimport genlib as _g\n"
                      "print(json.dumps({'file': _g.__file__, 'modules': sorted({m.split('.')[0] "
                      "for m in sys.modules})}))\n")
    run = subprocess.run([str(python), str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["file"].startswith(str(site)), report["file"]  # the wheel's genlib, not the checkout's
    # every third-party module imported is provided by a declared dependency or one of theirs
    declared = {re.split(r"[<>=!~ ;\[]", r)[0].lower().replace("_", "-")
                for r in importlib.metadata.requires("genbook-genlib") if "extra ==" not in r}
    closure, todo = set(), list(declared)
    while todo:
        name = todo.pop()
        if name in closure:
            continue
        closure.add(name)
        try:
            reqs = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        todo += [re.split(r"[<>=!~ ;\[(]", r)[0].lower().replace("_", "-") for r in reqs if "extra ==" not in r]
    providers = importlib.metadata.packages_distributions()
    # what the declared dependencies import by themselves (POT, for one, imports a package it does not declare)
    own = sorted(m for m, dists in providers.items() if m.isidentifier() and not m.startswith("_")
                 and {d.lower().replace("_", "-") for d in dists} & declared)
    probe = "\n".join(["import importlib, json, sys", f"for m in {own!r}:", "    try:",
                       "        importlib.import_module(m)", "    except Exception:", "        pass",
                       "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"])
    baseline = json.loads(subprocess.run([str(python), "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                                         check=True).stdout.strip().splitlines()[-1])
    undeclared = {m for m in set(report["modules"]) - set(baseline) if m in providers and m != "genlib"
                  and not {d.lower().replace("_", "-") for d in providers[m]} & closure}
    assert not undeclared, f"imported without being declared: {sorted(undeclared)}"


def test_binder_and_pip_declare_the_same_dependencies():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = set(project["dependencies"]) | set(project["optional-dependencies"]["book"])
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = lines.index("  - pip:") + 1
    items = [ln.strip()[2:] for ln in lines[start:] if ln.strip().startswith("- ")]
    binder = {item for item in items if not item.startswith("--")}
    by_name = {re.split(r"[<>=!~ ]", d)[0].lower(): d for d in declared}
    binder_names = {re.split(r"[<>=!~ ]", d)[0].lower(): d for d in binder}
    assert set(by_name) == set(binder_names), set(by_name) ^ set(binder_names)
    for name, spec in by_name.items():
        if name != "torch":  # Binder pins the CPU build of torch within the declared range
            assert binder_names[name] == spec, (binder_names[name], spec)
