import math

import pytest
import torch

from ganops.classifier import Classifier, to_float, train_classifier
from ganops.config import ClassifierParams, DataParams, EvaluateParams
from ganops.data import prepare
from ganops.evaluate import (
    EvaluationError,
    Monitor,
    asked_classes,
    class_stats,
    classifier_verdict,
    collapsed,
    evaluate_samples,
    fid_kid,
    generate,
    inception_fid,
    summary_line,
)
from ganops.models.classifier import FeatureExtractor
from ganops.models.gan import GANConfig, build, seeded_noise


@pytest.fixture(scope="module")
def digits():
    d = prepare(DataParams(image_size=16))
    clf = train_classifier(d.images, d.labels, ClassifierParams(epochs=12), progress=False)
    assert clf.info["holdout_accuracy"] > 0.9
    return d, clf


def test_real_data_as_generated_scores_like_the_baseline(digits):
    d, clf = digits
    perm = torch.randperm(len(d.images), generator=torch.Generator().manual_seed(7))
    fake = to_float(d.images[perm[:800]])
    m, _ = evaluate_samples(d.images, d.labels, fake, clf, EvaluateParams())
    assert m["coverage"] == 10 and m["n_classes"] == 10 and not m["mode_collapse"]
    assert m["kl"] < 0.05 and m["confident_frac"] > 0.8
    assert m["domain_fid"] < 3 * m["baseline_fid"] + 0.5  # "near the baseline"
    assert m["n_generated"] == 800 and m["n_real_reference"] == len(d.images) // 2
    assert m["extractor"] == "domain-classifier"
    assert m["baseline_confident_frac"] > 0.8 and "label_agreement" not in m


def test_label_agreement_counts_samples_of_the_class_asked_for(digits):
    d, clf = digits
    idx = torch.randperm(len(d.images), generator=torch.Generator().manual_seed(3))[:500]
    fake, asked = to_float(d.images[idx]), d.labels[idx]
    right, _ = evaluate_samples(d.images, d.labels, fake, clf, EvaluateParams(), fake_labels=asked)
    wrong, _ = evaluate_samples(d.images, d.labels, fake, clf, EvaluateParams(), fake_labels=(asked + 1) % 10)
    assert right["label_agreement"] > 0.9 and wrong["label_agreement"] < 0.1
    assert "class as asked" in summary_line(right)


def test_asked_classes_are_those_behind_generate():
    G, _ = build(GANConfig(image_size=16, latent_dim=8, ngf=4, ndf=4, class_counts=(3, 3)))
    asked = asked_classes(G, 40, seed=5, n_classes=2)
    with torch.no_grad():
        assert torch.equal(generate(G, 40, seed=5), G(seeded_noise(40, G.cfg.latent_dim, 5), asked))
    assert asked_classes(G, 40, seed=5, n_classes=10) is None  # classes the classifier does not know
    assert (
        asked_classes(build(GANConfig(image_size=16, latent_dim=8, ngf=4, ndf=4))[0], 4, seed=5, n_classes=2)
        is None
    )


def test_collapsed_sampler_is_flagged(digits):
    d, clf = digits
    sevens = to_float(d.images[d.labels == 7][:150])
    m, _ = evaluate_samples(d.images, d.labels, sevens, clf, EvaluateParams())
    assert m["coverage"] == 1 and m["mode_collapse"]
    assert m["kl"] > 2.0  # ~ log 10
    assert m["domain_fid"] > 10 * m["baseline_fid"]


def test_unlabelled_data_gets_fid_only_with_the_extractor_named(digits):
    d, _ = digits
    unl = torch.full_like(d.labels, -1)
    rnd = train_classifier(d.images, unl, ClassifierParams(), progress=False)
    m, _ = evaluate_samples(d.images, unl, to_float(d.images[:300]), rnd, EvaluateParams())
    assert m["extractor"] == "random-cnn-seed0" and "coverage" not in m and "mode_collapse" not in m
    assert math.isfinite(m["domain_fid"]) and math.isfinite(m["baseline_fid"])


def test_class_stats_known_values():
    real = torch.tensor([10, 10])
    probs = torch.tensor([[0.95, 0.05]] * 3 + [[0.3, 0.7]])  # 3 of class 0, 1 of class 1
    s = class_stats(probs, real, min_frac=0.3)
    assert s["coverage"] == 1  # class 1 got 25 % < 30 %
    assert s["kl"] == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5))
    assert s["mean_confidence"] == pytest.approx((0.95 * 3 + 0.7) / 4)
    assert s["confident_frac"] == pytest.approx(0.75)


def test_generate_is_seeded_and_in_range():
    G, _ = build(GANConfig(image_size=16, latent_dim=8, ngf=4, ndf=4))
    a, b = generate(G, 10, seed=1, batch_size=3), generate(G, 10, seed=1, batch_size=10)
    assert a.shape == (10, 1, 16, 16) and torch.allclose(a, b, atol=1e-6) and a.abs().max() <= 1
    assert not torch.equal(a, generate(G, 10, seed=2))


def test_inception_fid_without_cached_weights_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(EvaluationError) as e:
        inception_fid(torch.zeros(2, 1, 16, 16), torch.zeros(2, 1, 16, 16))
    assert "weights-inception-2015-12-05-6726825d.pth" in str(e.value)
    assert str(tmp_path / "hub" / "checkpoints") in str(e.value)


def test_monitor_fid_is_the_evaluate_stage_fid(digits):
    # One Fréchet distance: the monitor's domain_fid is fid_kid's (torchmetrics') on the same images, and
    # its real statistics survive between calls.
    d, clf = digits
    p = EvaluateParams()
    real, fake = d.images[:600], to_float(d.images[600:1000])
    mon = Monitor(real, d.labels[:600], clf, p, n=400, seed=1)
    want = fid_kid(FeatureExtractor(clf.net), to_float(real), fake, p.kid_subset_size, p.batch_size)["fid"]
    assert mon(_Replay(fake))["domain_fid"] == want
    assert mon(_Replay(fake))["domain_fid"] == want
    assert fid_kid(FeatureExtractor(clf.net), fake, fake, 100, 64)["fid"] == pytest.approx(0.0, abs=1e-6)


class _Replay(torch.nn.Module):
    """A 'generator' that returns stored images, in order: lets the monitor score known samples.

    With ``asked`` it poses as a conditional G that was asked for those classes.
    """

    def __init__(self, x, asked=None):
        super().__init__()
        self.x, self.i, self.asked = x, 0, asked
        counts = (1,) * 10 if asked is not None else ()
        self.cfg = GANConfig(image_size=x.shape[-1], latent_dim=4, class_counts=counts)

    def labels_for(self, z):
        return self.asked[: len(z)]

    def forward(self, z):
        out = self.x[self.i : self.i + len(z)]
        self.i += len(z)
        return out


def test_monitor_scores_like_evaluate_and_flags_collapse(digits):
    d, clf = digits
    mon = Monitor(d.images, d.labels, clf, EvaluateParams(), n=400, seed=1)
    good = mon(_Replay(to_float(d.images[torch.randperm(len(d.images))[:400]])))
    assert good["coverage"] == 10 and good["kl"] < 0.05 and not good["mode_collapse"]
    sevens = to_float(d.images[d.labels == 7])
    bad = mon(_Replay(sevens[torch.arange(400) % len(sevens)]))
    assert bad["coverage"] == 1 and bad["mode_collapse"] and bad["kl"] > 2.0
    assert bad["domain_fid"] > 10 * good["domain_fid"]
    assert "label_agreement" not in good  # an unconditional G
    idx = torch.randperm(len(d.images), generator=torch.Generator().manual_seed(2))[:400]
    x, y = to_float(d.images[idx]), d.labels[idx]
    assert mon(_Replay(x, asked=y))["label_agreement"] > 0.9
    assert mon(_Replay(x, asked=(y + 1) % 10))["label_agreement"] < 0.1


def test_evaluate_reports_domain_and_baseline_kid():
    # README: evaluate reports KID next to FID, for the generator and for the real-vs-real baseline.
    # A random feature extractor (unlabelled data) keeps this fast; KID is computed in any feature space.
    d = prepare(DataParams(image_size=16))
    unl = torch.full_like(d.labels, -1)
    rnd = train_classifier(d.images, unl, ClassifierParams(), progress=False)
    perm = torch.randperm(len(d.images), generator=torch.Generator().manual_seed(3))
    real, _ = evaluate_samples(d.images, unl, to_float(d.images[perm[:300]]), rnd, EvaluateParams())
    sevens = to_float(d.images[d.labels == 7][:150])
    bad, _ = evaluate_samples(d.images, unl, sevens, rnd, EvaluateParams())
    for m in (real, bad):
        assert math.isfinite(m["domain_kid"]) and math.isfinite(m["baseline_kid"])
    assert bad["domain_kid"] > real["domain_kid"]  # one digit only is further from the data than real digits


def test_kid_is_the_same_for_the_same_inputs_and_leaves_the_global_generator_alone(digits):
    # torchmetrics draws KID's subsets from torch's global generator: fid_kid seeds them, so `evaluate`
    # writes the same metrics/evaluate.json twice (it did not: domain_kid changed run to run).
    d, clf = digits
    ext = FeatureExtractor(clf.net)
    real, fake = to_float(d.images[:200]), to_float(d.images[200:400])
    state = torch.get_rng_state()
    a = fid_kid(ext, real, fake, kid_subset=50, batch_size=64)
    assert torch.equal(torch.get_rng_state(), state)
    torch.rand(5)  # another global state
    assert fid_kid(ext, real, fake, kid_subset=50, batch_size=64) == a
    assert fid_kid(ext, real, fake, kid_subset=50, batch_size=64, seed=1)["kid"] != a["kid"]


def test_collapse_is_judged_against_the_real_pictures_and_a_weak_classifier_judges_nothing(digits):
    d, clf = digits
    p = EvaluateParams()
    real = {"coverage": 14, "kl": 0.05}  # a real set covering 14 of 18 classes is the ceiling, not a failure
    assert not collapsed({"coverage": 14, "kl": 0.1}, real, p)
    assert collapsed({"coverage": 8, "kl": 0.1}, real, p)
    assert collapsed({"coverage": 14, "kl": 0.2}, real, p)  # over the threshold beyond the real KL
    assert classifier_verdict(clf, 0.94) == ""
    weak = Classifier(clf.net, clf.extractor, True, clf.info | {"holdout_accuracy": 0.29})
    assert "held-out accuracy 0.29" in classifier_verdict(weak, 0.94)
    assert "confident about 0%" in classifier_verdict(clf, 0.0)
    # evaluated with the weak classifier: numbers, a note, no verdict
    m, _ = evaluate_samples(d.images, d.labels, to_float(d.images[:300]), weak, p)
    assert "mode_collapse" not in m and "too weak" in m["classifier_note"] and "coverage" in m
