"""The `train-gan` flow's training task dies mid-run; Prefect's retry resumes it, exactly. Its promote
task's first attempt fails; the retry registers one version and records its decision.

Runs the flow in-process against a real Prefect server (``prefect_test_harness``). The crash is a real
exception out of the training loop at step 8 (after the step-8 checkpoint), on the first attempt only.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from mlflow import MlflowClient

from ganops import stages
from ganops.config import load_params
from ganops.tracking import RunContext
from tests.conftest import PARAMS

pytestmark = pytest.mark.e2e
TINY = ["data.image_size=16", "data.limit=96", "gan.steps=16", "gan.batch_size=16", "gan.ngf=4", "gan.ndf=4",
        "gan.latent_dim=8", "gan.sample_every=8", "gan.checkpoint_every=4", "gan.log_every=4",
        "gan.monitor_every=0", "classifier.epochs=1", "evaluate.kid_subset_size=20"]  # fmt: skip


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


def test_training_task_retry_resumes_the_unfinished_run_exactly(harness, tmp_path, monkeypatch):
    import flows.train_gan as flow_module

    shutil.copy(PARAMS, tmp_path / "params.yaml")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setattr(flow_module, "ROOT", tmp_path)
    real, calls = stages.train_gan, []

    def dies_once(params, at, *, ctx, progress, should_stop=None):
        calls.append(ctx)

        def lost(step: int) -> bool:
            if step >= 8:
                raise RuntimeError("worker lost mid-training")
            return False

        return real(params, at, ctx=ctx, progress=progress, should_stop=lost if len(calls) == 1 else None)

    real_promote, promotions = stages.promote, []

    def registry_fails_once(params, at):
        # the first attempt's registry write fails (a tracking server restarting, say); the task's retry lands
        promotions.append(at)
        if len(promotions) == 1:
            raise ConnectionError("tracking server unreachable while registering")
        return real_promote(params, at)

    monkeypatch.setattr(stages, "train_gan", dies_once)
    monkeypatch.setattr(stages, "promote", registry_fails_once)
    result = flow_module.train_gan_flow(overrides=TINY)
    assert len(calls) == 2 and calls[0] == calls[1]  # Prefect retried the task with the same context
    assert len(promotions) == 2  # ... and the promote task, whose retry then landed (asserted below)

    c = MlflowClient(uri)
    runs = c.search_runs([c.get_experiment_by_name("ganops").experiment_id])
    assert [r.info.run_id for r in runs] == [result["mlflow_run_id"]]  # the unfinished run was continued
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.metrics["resumed_from_step"] == 8
    assert run.data.tags["prefect_flow_run_id"] == calls[0].flow_run_id and calls[0].entry_point == "prefect"
    # one version registered, not two; a subset (data.limit) never takes over, so the decision is recorded
    # and the alias stays unset
    versions = c.search_model_versions("name='ganops-generator'")
    assert [v.run_id for v in versions] == [run.info.run_id] and not result["promoted"]
    assert "subset" in run.data.tags["promote_reason"]

    # the oracle: the same training, uninterrupted, outside Prefect
    p = load_params(tmp_path / "params.yaml", TINY)
    ref = stages.Layout(root=tmp_path / "reference", tracking_root=tmp_path)
    stages.prepare(p, ref)
    real(p, ref, ctx=RunContext("test"), progress=False)
    work = stages.Layout(root=tmp_path / ".ganops/flow-runs" / calls[0].flow_run_id)
    a = torch.load(work.gan / "final/generator.pt", weights_only=True)
    b = torch.load(ref.gan / "final/generator.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (work.root / "DONE.json").is_file()
