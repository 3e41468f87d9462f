import pytest
import torch

from ganops.classifier import load_classifier, save_classifier, train_classifier
from ganops.config import ClassifierParams, DataParams
from ganops.data import prepare


@pytest.fixture(scope="module")
def digits16():
    return prepare(DataParams(image_size=16, limit=800))


def test_learns_digits_and_reports_holdout_accuracy(digits16):
    c = train_classifier(
        digits16.images, digits16.labels, ClassifierParams(epochs=12, batch_size=32), progress=False
    )
    assert c.trained and c.extractor == "domain-classifier"
    assert c.info["n_holdout"] == 80 and c.info["holdout_accuracy"] > 0.85
    assert c.net.cfg.n_classes == 10 and not c.net.training


def test_unlabelled_data_gets_a_named_random_extractor(digits16):
    labels = torch.full_like(digits16.labels, -1)
    c = train_classifier(digits16.images, labels, ClassifierParams(), seed=3, progress=False)
    assert not c.trained and c.extractor == "random-cnn-seed3" and "holdout_accuracy" not in c.info
    again = train_classifier(digits16.images, labels, ClassifierParams(), seed=3, progress=False)
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    assert torch.equal(c.net.features(x), again.net.features(x))  # seeded: the same extractor every time


def test_save_load_round_trip(digits16, tmp_path):
    c = train_classifier(
        digits16.images, digits16.labels, ClassifierParams(epochs=1), data_hash="h", progress=False
    )
    save_classifier(c, tmp_path)
    c2 = load_classifier(tmp_path)
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    assert torch.equal(c.net(x), c2.net(x)) and c2.info["data_hash"] == "h" and c2.extractor == c.extractor
