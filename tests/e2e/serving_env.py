"""What the serving tests share: a temp MLflow registry with a champion, and `bentoml serve` over it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from ganops.config import PLAIN_DCGAN, DataParams, GanParams, parse_params
from ganops.data import manifest, prepare
from ganops.tracking import (
    EVALUATED_TAG,
    STYLE_NET_ARTIFACT,
    RunContext,
    log_to_run,
    register_generator,
    set_alias,
    start_run,
    style_model_name,
)
from ganops.train_gan import fit
from tests.e2e.servers import start_server, stop

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MAX_N = 32


def train_version(
    root: Path, uri: str, seed: int = 0, metrics: dict | None = None, name: str = "ganops-generator"
) -> dict:
    """Train a tiny conditional generator, log it as an MLflow run and register it as ``name`` (no alias
    moved)."""
    d = prepare(DataParams(image_size=16, limit=64))
    p = GanParams(**{**PLAIN_DCGAN, "conditional": True}, latent_dim=8, ngf=4, ndf=4, batch_size=16, steps=3,
                  sample_every=3, checkpoint_every=3)  # fmt: skip
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        with start_run(parse_params({}), ctx=RunContext("test"), data_hash="h" * 64, root=root) as run:
            r = fit(d.images, p, root / f"gan{seed}", labels=d.labels, seed=seed, progress=False)
            run.log_artifacts(r.export, "checkpoint")
        m = {"dataset_hash": manifest(d)["content_hash"], "extractor": "test", "domain_fid": 1.5,
             "baseline_fid": 0.25, "artifact_score": 0.125} | (metrics or {})  # fmt: skip
        numbers = {k: v for k, v in m.items() if isinstance(v, float)}  # as `ganops evaluate` logs them
        log_to_run(run.run_id, numbers, {EVALUATED_TAG: ",".join(sorted(numbers))})
        facts = register_generator(run.run_id, name, m, metric="domain_fid")
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
    return facts | {"export": r.export}


def make_champion(root: Path, uri: str) -> dict:
    """A registry holding one generator as @champion and one fast style net (ganops-style-waves@champion)."""
    facts = train_version(root, uri)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        set_alias("ganops-generator", "champion", facts["version"])
        register_style_net(root)
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
    return facts | {"root": root}


def register_style_net(root: Path, style: str = "waves") -> None:
    """A tiny fast style net, logged and registered as ganops-style-<style>@champion (as the stage does)."""
    from ganops.artifacts import atomic_write
    from ganops.config import StyleParams
    from ganops.models.style import build_vgg
    from ganops.stylize import train_fast
    from ganops.tracking import register_folder, style_run

    sp = StyleParams(weights="random", size=32, fast_steps=2, fast_width=4, style_layers={"relu1_1": 1.0})
    vgg = build_vgg("random", [sp.content_layer, *sp.style_layers])
    net = train_fast([torch.rand(1, 3, 40, 40)], [(torch.rand(1, 3, 32, 32), 1.0)], vgg, sp)
    folder = root / "style_net"
    atomic_write(folder / "transformer.pt", net.state_dict())
    atomic_write(folder / "config.json", json.dumps({"method": "fast", "model": net.cfg.to_dict()}))
    with style_run(
        parse_params({}),
        ctx=RunContext("test"),
        style=style,
        content="(training)",
        extractor=vgg.name,
        root=root,
    ) as run:
        run.log_artifacts(folder, STYLE_NET_ARTIFACT)
        register_folder(run.run_id, STYLE_NET_ARTIFACT, style_model_name(style), "champion", {"style": style})


@contextmanager
def serve(tmp: Path, uri: str, **settings: str) -> Iterator[str]:
    """`bentoml serve` of the project's service over ``uri`` on a free loopback port; yields its base URL."""
    env = os.environ | {"MLFLOW_TRACKING_URI": uri, "GANOPS_MAX_N": str(MAX_N), "BENTOML_DO_NOT_TRACK": "true",
                        "BENTOML_HOME": str(tmp / "bentoml"), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
                        **settings}  # fmt: skip
    with open(tmp / "serve.log", "a") as log:

        def launch(port: int) -> subprocess.Popen:
            return subprocess.Popen(
                ["bentoml", "serve", "serving.service:GanService", "--host", "127.0.0.1", "--port", str(port)],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

        proc, port = start_server(launch, "/readyz")
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            stop(proc)
