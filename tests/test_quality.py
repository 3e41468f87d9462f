"""Quality guard: the default config, trained briefly on the demo's digits, must still draw digits.

Every other test checks that training *runs* (shapes, resume, NaN rollback); this one checks that it
*learns*: a change that breaks the GAN's quality (a wrong sign in a loss, a broken EMA, an augmentation
applied to one side only) turns CI red here. It trains the package's defaults (the ones params.yaml
ships; tests/test_config.py keeps them in step) for ``STEPS`` steps and scores the EMA generator with the
evaluate stage's code against the demo's trained digit classifier.

The bounds come from measurements (2026-12-05, 2 CPU cores, seeds 0-2, below): about 2-3x the worst
measured value (a run on another machine does not repeat these numbers bit for bit), and far from what an
untrained generator scores, which the control checks, so the guard can fail. ~50 s on 2 cores.
"""

from __future__ import annotations

import pytest
import torch

from ganops.classifier import Classifier, train_classifier
from ganops.config import ClassifierParams, DataParams, EvaluateParams, GanParams
from ganops.data import Prepared, prepare
from ganops.evaluate import asked_classes, evaluate_samples, generate
from ganops.models.gan import load_generator
from ganops.train_gan import fit

STEPS = 400  # ~1/5 of the demo's training
# measured at 400 steps, seeds 0 / 1 / 2: coverage 10 / 10 / 10, KL 0.103 / 0.053 / 0.099, domain FID 11.2 / 9.6 /
# 10.9 (real vs real: 0.37); an untrained G: coverage 1, KL 2.31, FID ~530
BOUNDS = {"coverage_min": 10, "kl_max": 0.3, "domain_fid_max": 25.0}


@pytest.fixture(scope="module")
def digits() -> Prepared:
    return prepare(DataParams())  # the demo's data: all 1,797 embedded digits at 32 px


@pytest.fixture(scope="module")
def judge(digits: Prepared) -> Classifier:
    clf = train_classifier(digits.images, digits.labels, ClassifierParams(), seed=0, progress=False)
    assert clf.info["holdout_accuracy"] > 0.9  # a judge that knows digits, else the guard means nothing
    return clf


def score(G: torch.nn.Module, digits: Prepared, clf: Classifier) -> dict:
    n = len(digits.images) // 2  # as many as each real-vs-real half
    fake = generate(G, n, seed=1)
    asked = asked_classes(G, n, seed=1, n_classes=clf.net.cfg.n_classes)
    m, _ = evaluate_samples(
        digits.images, digits.labels, fake, clf, EvaluateParams(), seed=0, fake_labels=asked
    )
    return m


def passes(m: dict) -> bool:
    return (
        m["coverage"] >= BOUNDS["coverage_min"]
        and m["kl"] <= BOUNDS["kl_max"]
        and m["domain_fid"] <= BOUNDS["domain_fid_max"]
    )


@pytest.fixture(scope="module")
def trained(digits: Prepared, tmp_path_factory: pytest.TempPathFactory):
    p = GanParams(steps=STEPS, monitor_every=0, sample_every=STEPS, checkpoint_every=STEPS)
    out = tmp_path_factory.mktemp("quality")
    r = fit(digits.images, p, out, labels=digits.labels, seed=0, progress=False)
    assert r.completed and r.step == STEPS
    return r


def test_default_config_learns_digits_in_a_few_hundred_steps(trained, digits, judge):
    m = score(load_generator(trained.export), digits, judge)
    print({k: round(float(m[k]), 3) for k in ("coverage", "kl", "domain_fid", "baseline_fid")})
    assert m["coverage"] >= BOUNDS["coverage_min"], m
    assert m["kl"] <= BOUNDS["kl_max"], m
    assert m["domain_fid"] <= BOUNDS["domain_fid_max"], m
    assert passes(m)


def test_control_an_untrained_generator_fails_the_guard(trained, digits, judge):
    G = load_generator(trained.export)
    torch.manual_seed(0)
    for mod in G.modules():  # the same architecture, its weights re-drawn: what a broken training leaves
        if hasattr(mod, "reset_parameters"):
            mod.reset_parameters()
    m = score(G, digits, judge)
    assert not passes(m), m
