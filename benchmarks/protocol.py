"""The Synthesis benchmark: every family's headline eight-Gaussians model, scored with the book's protocol.

    python benchmarks/protocol.py                      # seed 0, every family, CSV + Markdown in benchmarks/results
    python benchmarks/protocol.py --seeds 0 1 2        # the robustness table: mean and spread over seeds
    python benchmarks/protocol.py --families gmm flow --samples 20000 --out /tmp/bench   # a small run
    python benchmarks/protocol.py --dataset two_moons --name two_moons   # the second data set

Models come from genlib.zoo (trained on first use, then loaded from the cache), so the numbers are the ones the
chapters show. Runs on CUDA unchanged (``--device cuda``); the device, commit and date go into the output.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import genlib  # noqa: E402
from genlib import metrics  # noqa: E402

FIELDS = ["family", "seed", *metrics.BENCHMARK_FIELDS]


def provenance(device: torch.device) -> dict:
    """Where and when the numbers were made: date, device, commit, versions."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        commit += " (uncommitted changes)" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{os.cpu_count()} cores, {platform.machine()}"
    return {"date": datetime.date.today().isoformat(), "device": f"{device.type}: {name}",
            "threads": torch.get_num_threads(), "commit": commit, "genlib": genlib.__version__,
            "torch": torch.__version__}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=None, help="zoo keys (default: every headline family)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--device", default=None, help="cpu or cuda (default: genlib.device())")
    parser.add_argument("--samples", type=int, default=metrics.PROTOCOL_SAMPLES,
                        help="samples per model (the protocol uses 100,000)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--dataset", default="eight_gaussians", choices=sorted(genlib.data.TOY_DENSITIES),
                        help="the 2-D data set (every family's headline recipe trained on it)")
    parser.add_argument("--name", default=None, help="file stem of the outputs (default: the data set)")
    parser.add_argument("--no-references", action="store_true", help="skip the floor / KDE / oracle rows")
    args = parser.parse_args(argv)

    device = genlib.device() if args.device is None else torch.device(args.device)
    prov = provenance(device)
    print(f"device: {prov['device']}  commit {prov['commit']}  torch {prov['torch']}", flush=True)
    name = args.name or args.dataset
    rows = metrics.benchmark(args.families, seeds=args.seeds, device=device, n=args.samples, progress=True,
                             dataset=args.dataset)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / f"{name}.csv", "w", newline="") as f:
        f.write("".join(f"# {k}: {v}\n" for k, v in prov.items()))
        w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    seeds = ", ".join(str(s) for s in args.seeds)
    title = {"eight_gaussians": "Eight Gaussians", "two_moons": "Two moons"}.get(args.dataset, args.dataset)
    table = (f"{title}, the book's evaluation protocol, seed(s) {seeds}; {prov['date']}, {prov['device']}, "
             f"commit {prov['commit']}, torch {prov['torch']}.\n\n"
             + metrics.comparison_table(rows, references=not args.no_references, dataset=args.dataset) + "\n")
    (args.out / f"{name}.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
