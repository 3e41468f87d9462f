"""Benchmark: the `style-transfer` flow's pairs on Prefect's thread runner vs a Dask LocalCluster, same run.

The flow itself (``flows.style_transfer.style_transfer_flow``) runs in this process against a real temporary
Prefect server (``prefect_test_harness``), on a throwaway copy of the project's default inputs (2 photos x
2 paintings = 4 pairs, then the contact sheet) with its own MLflow store. Rounds alternate between
``dask_workers=0`` (the default: the pairs as concurrent Prefect tasks on threads of the flow's process)
and ``dask_workers=N`` (prefect-dask's DaskTaskRunner on a LocalCluster of N one-thread worker processes,
each rebuilding the VGG19 extractor from the params it is given). The wall time of the whole flow run is
what a user waits for; the median over rounds is reported with the ratio threads / Dask (> 1: Dask faster).

    python bench/style_fanout.py                    # 96 px, 40 L-BFGS evaluations, 2 rounds, 2 workers
    python bench/style_fanout.py --size 160 --steps 80 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `flows` (and, through PYTHONPATH below, the Dask workers too)
STYLES = ("starry_night", "the_scream")


def _project(tmp: Path) -> None:
    """The inputs the flow reads (params.yaml, the default photos and paintings), copied under ``tmp``."""
    shutil.copy(ROOT / "params.yaml", tmp / "params.yaml")
    for folder in ("data/photos", "data/paintings"):
        shutil.copytree(ROOT / folder, tmp / folder)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=96, help="style.size (longer side, px)")
    ap.add_argument("--steps", type=int, default=40, help="style.steps (L-BFGS evaluations per pair)")
    ap.add_argument("--workers", type=int, default=2, help="Dask LocalCluster worker processes")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/style_fanout.json")
    a = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="ganops-fanout-"))
    try:
        _project(tmp)
        # before the flow module is imported: it reads the project root once; the Dask workers inherit both
        os.environ["GANOPS_PROJECT_ROOT"] = str(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        from flows.style_transfer import style_transfer_flow
        from prefect.testing.utilities import prefect_test_harness

        blend = ", ".join(f"{s}: {{{s}: 1.0}}" for s in STYLES)
        overrides = [f"style.size={a.size}", f"style.steps={a.steps}", f"style.styles={{{blend}}}"]
        times: dict[str, list[float]] = {"threads": [], "dask": []}
        with prefect_test_harness(server_startup_timeout=180):
            for r in range(a.rounds):
                for mode in ("threads", "dask") if r % 2 == 0 else ("dask", "threads"):
                    t0 = time.perf_counter()
                    out = style_transfer_flow(overrides=overrides, keep_runs=-1,
                                              dask_workers=a.workers if mode == "dask" else 0)  # fmt: skip
                    times[mode].append(time.perf_counter() - t0)
                    assert out["pairs"] == 2 * len(STYLES) and out["sheet"], out
                    print(f"round {r + 1} {mode}: {times[mode][-1]:.1f} s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "command": "python bench/style_fanout.py " + " ".join(sys.argv[1:]),
        "pairs": 2 * len(STYLES),
        "size": a.size,
        "steps": a.steps,
        "dask_workers": a.workers,
        "seconds": times,
        "median_seconds": med,
        "threads_over_dask": med["threads"] / med["dask"],
        "cores": os.cpu_count(),
        "machine": platform.machine(),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
