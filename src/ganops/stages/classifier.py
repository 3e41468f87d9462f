"""Stage ``classifier``: the domain classifier of the prepared data (the offline metrics' yardstick) ->
``models/classifier/`` and ``metrics/classifier.json``."""

from __future__ import annotations

from ganops.classifier import Classifier, save_classifier, train_classifier
from ganops.config import Params
from ganops.devices import resolve_device
from ganops.stages.common import Layout, prepared_data, write_json


def classifier(p: Params, at: Layout = Layout(), *, progress: bool = True) -> Classifier:
    """Stage `classifier`; returns the Classifier (also saved, with metrics/classifier.json)."""
    images, labels, man = prepared_data(at, p)
    c = train_classifier(images, labels, p.classifier, seed=p.base.seed, data_hash=man["content_hash"],
                         device=resolve_device(p.base.device), progress=progress)  # fmt: skip
    save_classifier(c, at.classifier)
    write_json(at.metrics / "classifier.json", {"extractor": c.extractor, **c.info})
    return c
