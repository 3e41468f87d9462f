import json
import shutil
from pathlib import Path

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from ganops.cli import app
from ganops.config import parse_params
from ganops.promote import decide, resolve_metric
from ganops.tracking import RunContext, start_run
from tests.conftest import PARAMS

ROOT = Path(__file__).resolve().parents[1]
C = {"run_id": "a", "dataset_hash": "h", "extractor": "x", "domain_fid": 2.0, "coverage": 10}


def test_decide_rules():
    assert decide(C, None, "domain_fid").promote
    assert decide(C | {"domain_fid": 1.0}, C | {"run_id": "b"}, "domain_fid").promote
    worse = decide(C | {"domain_fid": 3.0}, C | {"run_id": "b"}, "domain_fid")
    assert not worse.promote and "does not beat" in worse.reason
    tie = decide(C | {"coverage": 10}, C | {"run_id": "b", "coverage": 9}, "domain_fid")
    assert tie.promote and "coverage" in tie.reason
    assert not decide(C | {"coverage": 9}, C | {"run_id": "b"}, "domain_fid").promote
    assert not decide(C, C, "domain_fid").promote  # same run: already champion
    # a generator of other data never silently takes over what is served; only when told to
    other = decide(C | {"domain_fid": 1.0}, C | {"run_id": "b", "dataset_hash": "g"}, "domain_fid")
    assert not other.promote and "other data" in other.reason and "promote.across_data" in other.reason
    told = decide(
        C | {"domain_fid": 9.0}, C | {"run_id": "b", "dataset_hash": "g"}, "domain_fid", across_data=True
    )
    assert told.promote and "other data" in told.reason
    # another extractor of the same kind: not comparable, the candidate takes over
    assert decide(C | {"domain_fid": 9.0}, C | {"run_id": "b", "extractor": "y"}, "domain_fid").promote


def test_random_features_never_promote_over_trained_ones():
    # the 30-step generator of a new folder, scored in a random CNN's features ("FID 0.01"), against a
    # champion of the same data scored by a trained extractor: kept, whatever the numbers say
    champ = C | {"run_id": "b", "extractor": "domain-classifier", "domain_fid": 50.0}
    rnd = decide(C | {"extractor": "random-cnn-seed0", "domain_fid": 0.01}, champ, "domain_fid")
    assert not rnd.promote and "random-weight" in rnd.reason
    # both random (an unlabelled folder's line): compared as usual
    assert decide(C | {"extractor": "random-cnn-seed0", "domain_fid": 0.01}, champ | {"extractor": "random-cnn-seed0"},
                  "domain_fid").promote  # fmt: skip


def test_the_metric_is_compared_in_the_features_that_produced_it():
    # vgg_* in `extractor`, domain_* / kl in `domain_extractor`; versions from before the VGG metrics had one
    # extractor, the classifier's, under `extractor` (legacy)
    new = C | {"extractor": "vgg19-caffe-q8/relu4_1+relu5_1@128px", "domain_extractor": "domain-classifier",
               "vgg_kid": 0.01, "domain_fid": 1.0}  # fmt: skip
    old = C | {"run_id": "b", "extractor": "domain-classifier", "domain_fid": 2.0}
    assert decide(new, old, "domain_fid").reason.startswith("domain_fid 1 beats")
    assert "another extractor" in decide(new, old | {"vgg_kid": 0.02}, "vgg_kid").reason
    assert resolve_metric("auto", "vgg19") == "vgg_kid" and resolve_metric("auto", "domain") == "domain_fid"
    assert resolve_metric("kl", "vgg19") == "kl"
    with pytest.raises(ValueError, match="no 'kl'"):
        decide({"run_id": "a"}, None, "kl")


def _run_with_checkpoint(tmp: Path) -> str:
    folder = tmp / "ckpt"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text("{}")
    with start_run(parse_params({}), ctx=RunContext("test"), data_hash="h", root=tmp) as run:
        run.log_artifacts(folder, "checkpoint")
        return run.run_id


def _promote(tmp: Path, run_id: str, fid: float):
    (tmp / "metrics").mkdir(exist_ok=True)
    m = {
        "run_id": run_id,
        "dataset_hash": "h",
        "extractor": "domain-classifier",
        "domain_fid": fid,
        "baseline_fid": 0.25,
        "coverage": 10,
    }
    (tmp / "metrics" / "evaluate.json").write_text(json.dumps(m))
    r = CliRunner().invoke(app, ["promote"])
    assert r.exit_code == 0, r.output
    return json.loads((tmp / "metrics" / "promote.json").read_text()), r.output


def test_better_run_becomes_champion_and_a_worse_one_does_not(tmp_path, monkeypatch, isolated_tracking):
    shutil.copy(PARAMS, tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    c = MlflowClient(isolated_tracking)

    first = _run_with_checkpoint(tmp_path)
    d, out = _promote(tmp_path, first, 5.0)
    assert d["promote"] and d["reason"] == "no champion yet" and "v1 is now @champion" in out
    second = _run_with_checkpoint(tmp_path)
    d, _ = _promote(tmp_path, second, 3.0)
    assert d["promote"] and d["champion"]["domain_fid"] == 5.0 and d["candidate"]["domain_fid"] == 3.0
    assert c.get_model_version_by_alias("ganops-generator", "champion").run_id == second
    third = _run_with_checkpoint(tmp_path)
    d, out = _promote(tmp_path, third, 4.0)
    assert not d["promote"] and "@champion stays v2" in out
    assert c.get_model_version_by_alias("ganops-generator", "champion").run_id == second
    assert len(c.search_model_versions("name='ganops-generator'")) == 3  # every candidate is registered
    assert c.get_run(third).data.tags["promote_decision"] == "kept champion"
    # promoting the same run again registers nothing new and keeps the decision
    _promote(tmp_path, third, 4.0)
    assert len(c.search_model_versions("name='ganops-generator'")) == 3
    r = CliRunner().invoke(app, ["champion"])
    assert r.exit_code == 0 and "ganops-generator@champion = v2" in r.output
    # each version describes itself: what was trained, the promotion metric beside its baseline
    v2 = c.get_model_version("ganops-generator", "2")
    run_name = c.get_run(second).info.run_name
    assert v2.description == (f"dcgan generator, digits at 32 px, 2000 steps; run {run_name} ({second}); "
                              "domain_fid 3 beside real-vs-real 0.25 (final export)")  # fmt: skip
    assert "one training run" in c.get_registered_model("ganops-generator").description


def test_a_version_carries_what_promote_compares_and_reads_its_other_metrics_from_the_run(
    tmp_path, monkeypatch, isolated_tracking
):
    from ganops.tracking import (
        EVALUATED_TAG,
        champion,
        log_to_run,
        model_versions,
        register_generator,
        set_alias,
    )

    shutil.copy(PARAMS, tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    c = MlflowClient(isolated_tracking)
    evaluated = {"domain_fid": 3.0, "baseline_fid": 0.25, "coverage": 10.0, "vgg_kid": 0.5, "baseline_vgg_kid": 0.1,
                 "artifact_score": 0.02, "copy_rate": 0.0, "kl": 0.3}  # fmt: skip
    new = _run_with_checkpoint(tmp_path)
    log_to_run(new, evaluated, {EVALUATED_TAG: ",".join(evaluated)})  # as `ganops evaluate` does
    d, _ = _promote(tmp_path, new, 3.0)
    tags = c.get_model_version("ganops-generator", str(d["candidate"]["version"])).tags
    assert tags == {"dataset_hash": "h", "extractor": "domain-classifier", "data_limit": "0",
                    "promotion_metric": "domain_fid", "metric.domain_fid": "3.0", "metric.baseline_fid": "0.25",
                    "metric.coverage": "10.0"}  # fmt: skip
    # the other metrics are the run's, read through the version: one source of truth
    assert champion("ganops-generator", "champion") == {
        "version": 1,
        "run_id": new,
        **tags_facts(tags),
        **evaluated,
    }
    assert d["candidate"]["artifact_score"] == 0.02 and d["candidate"]["kl"] == 0.3
    # the run evaluated again after registration: what the version compared stays as registered (its tag),
    # the rest follows the run; the version itself is not rewritten
    log_to_run(new, {"domain_fid": 9.0, "kl": 0.7}, {})
    again = champion("ganops-generator", "champion")
    assert again["domain_fid"] == 3.0 and again["kl"] == 0.7
    assert c.get_model_version("ganops-generator", str(d["candidate"]["version"])).tags == tags

    # a version registered before (every metric a tag, its run never tagged by evaluate) reads the same
    old = _run_with_checkpoint(tmp_path)
    legacy = {"dataset_hash": "h", "extractor": "domain-classifier", "metric.domain_fid": "2.0",
              "metric.vgg_kid": "0.4", "metric.coverage": "10.0"}  # fmt: skip
    v = c.create_model_version("ganops-generator", f"runs:/{old}/checkpoint", run_id=old, tags=legacy)
    assert {"domain_fid": 2.0, "vgg_kid": 0.4, "coverage": 10.0}.items() <= next(
        f for f in model_versions("ganops-generator") if f["version"] == int(v.version)).items()  # fmt: skip
    set_alias("ganops-generator", "champion", int(v.version))
    # promote.metric switched to vgg_kid: the champion before had none as a tag; its run's value is compared
    later = _run_with_checkpoint(tmp_path)
    log_to_run(later, evaluated | {"vgg_kid": 0.45}, {EVALUATED_TAG: ",".join(evaluated)})
    facts = register_generator(
        later, "ganops-generator", {"dataset_hash": "h", "extractor": "domain-classifier"}, metric="kl"
    )
    assert facts["vgg_kid"] == 0.45 and facts["promotion_metric"] == "kl"
    assert decide(facts, champion("ganops-generator", "champion"), "vgg_kid").reason.endswith(
        "champion's 0.4"
    )


def tags_facts(tags: dict[str, str]) -> dict:
    """A version's tags as facts: lineage as text, ``metric.*`` as floats."""
    return {k.removeprefix("metric."): float(v) if k.startswith("metric.") else v for k, v in tags.items()}


def test_promote_without_evaluation_or_run(tmp_path, monkeypatch, isolated_tracking):
    shutil.copy(PARAMS, tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, ["promote"])
    assert r.exit_code == 2 and "ganops evaluate" in r.output
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "evaluate.json").write_text(json.dumps({"run_id": "f" * 32, "domain_fid": 1.0}))
    r = CliRunner().invoke(app, ["promote"])
    assert r.exit_code == 2 and "not in sqlite" in r.output
    r = CliRunner().invoke(app, ["champion"])
    assert r.exit_code == 2 and "no model ganops-generator@champion" in r.output


def test_subset_dry_run_and_other_extractor_rules():
    small = decide(C | {"domain_fid": 0.1, "data_limit": 100}, None, "domain_fid")
    assert not small.promote and "subset (data.limit=100)" in small.reason
    dry = decide(C | {"domain_fid": 1.0}, C | {"run_id": "b"}, "domain_fid", dry_run=True)
    assert not dry.promote and dry.reason.startswith("dry run") and "would promote" in dry.reason
    other = decide(
        C | {"domain_fid": 9.0}, C | {"run_id": "b", "extractor": "random-cnn-seed0"}, "domain_fid"
    )
    assert other.promote and "another extractor" in other.reason


def test_a_smoke_run_on_a_subset_never_takes_over(tmp_path, monkeypatch, isolated_tracking):
    shutil.copy(PARAMS, tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    champ = _run_with_checkpoint(tmp_path)
    assert _promote(tmp_path, champ, 5.0)[0]["promote"]
    folder = tmp_path / "ckpt"
    with start_run(parse_params({"data": {"limit": 100}}), ctx=RunContext("test"), data_hash="other",
                   root=tmp_path) as run:  # fmt: skip
        run.log_artifacts(folder, "checkpoint")
    d, out = _promote(tmp_path, run.run_id, 0.5)  # far better numbers, on 100 images of other data
    assert not d["promote"] and "subset" in d["reason"] and "@champion stays v1" in out
    assert (
        MlflowClient(isolated_tracking).get_model_version_by_alias("ganops-generator", "champion").run_id
        == champ
    )


def _racer(root: str, uri: str, who: int, rounds: list, barrier) -> None:
    """One promoting process: each round, wait for the other, then promote its candidate."""
    import os

    os.environ["MLFLOW_TRACKING_URI"] = uri
    from ganops import stages

    for r, cands in enumerate(rounds):
        at = stages.Layout(root=Path(root) / f"p{who}", tracking_root=Path(root))
        (at.metrics).mkdir(parents=True, exist_ok=True)
        run_id, fid = cands[who]
        m = {"run_id": run_id, "dataset_hash": "h", "extractor": "x", "domain_fid": fid, "coverage": 10}
        (at.metrics / "evaluate.json").write_text(json.dumps(m))
        p = parse_params({"promote": {"model_name": f"race-{r}"}})
        barrier.wait(timeout=120)
        stages.promote(p, at)


def race_promotions(tmp_path: Path, uri: str, n_rounds: int) -> None:
    """``n_rounds`` rounds, two promoting processes released together by a barrier on the store at ``uri``;
    each round the better candidate (randomly the first or the second process's) must end as champion."""
    import multiprocessing as mp
    import random

    rng = random.Random(0)
    rounds = []
    for _ in range(n_rounds):
        a, b = _run_with_checkpoint(tmp_path), _run_with_checkpoint(tmp_path)
        fa, fb = rng.sample([1.0, 2.0], 2)
        rounds.append([(a, fa), (b, fb)])
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_racer, args=(str(tmp_path), uri, who, rounds, barrier))
             for who in (0, 1)]  # fmt: skip
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=600)
    assert [p.exitcode for p in procs] == [0, 0]
    c = MlflowClient(uri)
    wrong = []
    for r, ((a, fa), (b, fb)) in enumerate(rounds):
        best = a if fa < fb else b
        if c.get_model_version_by_alias(f"race-{r}", "champion").run_id != best:
            wrong.append(r)
    assert wrong == [], f"the worse candidate is champion in rounds {wrong}"
    assert not [m.name for m in c.search_registered_models() if m.name.endswith(".lock")]  # locks released


def test_two_concurrent_promotions_always_end_with_the_better_one(tmp_path, isolated_tracking):
    # Compare-and-set on sqlite (tests/e2e/test_tracking_server.py runs it on mlflow server + PostgreSQL)
    race_promotions(tmp_path, isolated_tracking, 20)
