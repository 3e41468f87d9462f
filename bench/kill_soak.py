"""Reliability soak: SIGKILL `ganops train-gan` at random moments, resume each time, compare with an
uninterrupted run.

Half the kills strike at a random moment in the first seconds of a start (imports, data loading, first
steps); the other half wait for a fresh checkpoint and strike 0–1.5 s later (mid-training, or mid-write of a
checkpoint, sample grid or metric). SIGKILL gives the process no chance to clean up: whatever it was writing (a checkpoint, a sample grid, an
MLflow metric) is cut off mid-way. After ``--kills`` kills the run is allowed to finish; its final
generator, discriminator and EMA weights must equal those of an uninterrupted run of the same settings
bit for bit (CPU), exactly one MLflow run must hold the training (never finished before, so continued),
and no temp file may be left behind.

    python bench/kill_soak.py                   # 20 kills (several minutes on 2 cores)
    python bench/kill_soak.py --kills 50 --seed 3

Writes bench/results/kill_soak.json (with the command) and prints a summary; exit 1 if anything differs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ["data.image_size=16", "data.limit=256", "gan.steps=800", "gan.batch_size=16", "gan.ngf=8",
            "gan.ndf=8", "gan.latent_dim=16", "gan.checkpoint_every=20", "gan.sample_every=200",
            "gan.log_every=20", "gan.monitor_every=0"]  # fmt: skip


def _cmd(*args: str) -> list[str]:
    sets = [x for s in SETTINGS for x in ("-S", s)]
    return [str(Path(sys.executable).parent / "ganops"), *args, *sets]


def _project(d: Path) -> dict[str, str]:
    d.mkdir(parents=True)
    shutil.copy(ROOT / "params.yaml", d / "params.yaml")
    env = os.environ | {
        "MLFLOW_TRACKING_URI": f"sqlite:///{d / 'mlflow.db'}",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    subprocess.run(_cmd("prepare"), cwd=d, env=env, check=True, capture_output=True)
    return env


def _state(d: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in ("generator.pt", "generator_raw.pt", "discriminator.pt"):
        path = d / "models/gan/final" / f
        if path.is_file():
            out |= {f"{f}:{k}": v for k, v in torch.load(path, weights_only=True).items()}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0, help="seeds the kill moments")
    ap.add_argument("--max-delay", type=float, default=8.0, help="early kills: seconds after start, at most")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/kill_soak.json")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    tmp = Path(tempfile.mkdtemp(prefix="ganops-soak-"))
    try:
        ref_dir, soak_dir = tmp / "reference", tmp / "soak"
        env = _project(ref_dir)
        t0 = time.perf_counter()
        subprocess.run(
            _cmd("train-gan", "--no-progress"), cwd=ref_dir, env=env, check=True, capture_output=True
        )
        ref_seconds = time.perf_counter() - t0
        env = _project(soak_dir)
        kills, attempts, steps_at_kill = 0, 0, []
        ckpt = soak_dir / "models/gan/checkpoint.pt"
        while kills < a.kills:
            attempts += 1
            before = ckpt.stat().st_mtime_ns if ckpt.is_file() else 0
            proc = subprocess.Popen(_cmd("train-gan", "--no-progress"), cwd=soak_dir, env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
            # Every other kill lands anywhere in the first seconds (imports, loading, the first steps); the
            # others wait for a new checkpoint and then strike within the next second and a half, so the
            # run makes progress and the kill hits training, sample-grid, metric and checkpoint writes.
            early = attempts % 2 == 1
            deadline = time.time() + (rng.uniform(0.5, a.max_delay) if early else 600)
            while proc.poll() is None and time.time() < deadline:
                if not early and ckpt.is_file() and ckpt.stat().st_mtime_ns != before:
                    time.sleep(rng.uniform(0.0, 1.5))
                    break
                time.sleep(0.02)
            if proc.poll() is not None:
                print(f"attempt {attempts}: finished before its kill", flush=True)
                break  # training finished before this kill: nothing left to interrupt
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            step = int(torch.load(ckpt, weights_only=True)["step"]) if ckpt.is_file() else 0
            steps_at_kill.append(step)
            print(f"kill {kills} ({'early' if early else 'after a checkpoint'}): last checkpoint at step {step}",
                  flush=True)  # fmt: skip
        done = subprocess.run(_cmd("train-gan", "--no-progress"), cwd=soak_dir, env=env, capture_output=True,
                              text=True)  # fmt: skip
        ref, got = _state(ref_dir), _state(soak_dir)
        identical = (
            done.returncode == 0
            and ref.keys() == got.keys()
            and all(torch.equal(ref[k], got[k]) for k in ref)
        )
        from mlflow import MlflowClient

        c = MlflowClient(env["MLFLOW_TRACKING_URI"])
        runs = c.search_runs([c.get_experiment_by_name("ganops").experiment_id])
        temps = [str(p.relative_to(soak_dir)) for p in (soak_dir / "models").rglob(".*.tmp")]
        result = {
            "command": "python bench/kill_soak.py " + " ".join(sys.argv[1:]),
            "kills": kills,
            "attempts": attempts,
            "steps_at_kill": steps_at_kill,
            "final_returncode": done.returncode,
            "identical_to_uninterrupted": identical,
            "tensors_compared": len(ref),
            "mlflow_runs": len(runs),
            "mlflow_run_status": [r.info.status for r in runs],
            "temp_files_left": temps,
            "reference_seconds": round(ref_seconds, 1),
            "settings": SETTINGS,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    ok = identical and kills >= a.kills and len(runs) == 1 and not temps
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
