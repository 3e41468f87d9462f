"""Should the evaluated generator become the champion? A pure decision (what stage `promote` applies).

Lower is better for every promotion metric (domain FID / KID, KL, VGG KID / FID); a tie goes to higher class
coverage. Numbers are compared only like with like: the same dataset content hash, and the same feature
extractor for the chosen metric (the domain classifier's for ``domain_*`` and ``kl``, the VGG19's for
``vgg_*``).

- A champion trained on **other data** is not replaced unless ``across_data`` (``promote.across_data``) says
  so: a generator of a new folder must not silently take over what is served. (The stage also keeps one
  champion per data line, see ``stages/promote.py``.) With ``across_data`` the candidate takes over, and
  the decision says why.
- A candidate scored in **random-weight features** (``random-*``: an unlabelled folder's fallback) never
  replaces a champion scored in trained features: those numbers cannot judge it.
- A champion scored with another extractor of the same kind cannot be compared: the candidate takes over.
- A candidate trained on a subset of the data (``data.limit``, a smoke run) never takes over, nor does any
  candidate of a dry run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    metric: str
    candidate: dict[str, Any]  # version, run_id, dataset_hash, extractor, metric values
    champion: dict[str, Any] | None  # the same for the champion before the decision (None: there was none)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_metric(metric: str, space: str) -> str:
    """A ``promote.metric`` / ``gan.best_metric`` value with ``auto`` resolved for the headline ``space``:
    KID in VGG19 features (FID's covariance is rank-deficient with a few hundred pictures), else domain FID."""
    if metric != "auto":
        return metric
    return "vgg_kid" if space == "vgg19" else "domain_fid"


def baseline_of(m: dict[str, Any], metric: str) -> float | None:
    """The real-vs-real value of ``metric`` in evaluation metrics ``m`` (``domain_fid`` -> ``baseline_fid``,
    ``vgg_kid`` -> ``baseline_vgg_kid``), or None."""
    for key in (f"baseline_{metric}", f"baseline_{metric.removeprefix('domain_')}"):
        if isinstance(m.get(key), int | float):
            return float(m[key])
    return None


def extractor_of(facts: dict[str, Any], metric: str) -> str:
    """The feature extractor that produced ``metric`` in a version's facts. Versions registered before the
    VGG19 metrics existed have one extractor, the domain classifier's, under ``extractor`` (legacy)."""
    if metric.startswith("vgg_"):
        return str(facts.get("extractor", ""))
    return str(facts.get("domain_extractor") or facts.get("extractor", ""))


def decide(
    candidate: dict[str, Any],
    champion: dict[str, Any] | None,
    metric: str,
    *,
    dry_run: bool = False,
    across_data: bool = False,
) -> Decision:
    """Decide whether ``candidate`` replaces ``champion`` on ``metric`` (lower is better).

    Args:
        candidate / champion: dicts with ``run_id``, ``dataset_hash``, ``extractor`` (and
            ``domain_extractor``), ``metric``, ``coverage`` (absent on unlabelled data) and ``data_limit``
            (0 or absent: all the data).
        metric: the deciding metric's key.
        dry_run: decide and report, but never promote.
        across_data: a candidate of other data may replace the champion.
    """
    d = lambda ok, why: Decision(ok, why, metric, candidate, champion)  # noqa: E731
    if metric not in candidate:
        raise ValueError(f"candidate has no {metric!r} (metrics: {sorted(candidate)})")
    if int(candidate.get("data_limit") or 0) > 0:
        return d(False, f"candidate was trained on a subset (data.limit={int(candidate['data_limit'])}): "
                        "a smoke run never takes over")  # fmt: skip
    if dry_run:
        verdict = decide(candidate, champion, metric, across_data=across_data)
        return d(False, f"dry run (promote.dry_run): would {'promote' if verdict.promote else 'keep'}: "
                        f"{verdict.reason}")  # fmt: skip
    if champion is None:
        return d(True, "no champion yet")
    if champion.get("run_id") == candidate.get("run_id"):
        return d(False, "candidate is already the champion")
    c_hash, k_hash = str(candidate.get("dataset_hash"))[:12], str(champion.get("dataset_hash"))[:12]
    if c_hash != k_hash:
        if not across_data:
            return d(False, f"champion was trained on other data ({k_hash} vs {c_hash}): a generator of other "
                            "data takes over only with promote.across_data: true")  # fmt: skip
        return d(True, f"champion was trained on other data ({k_hash} vs {c_hash}) and promote.across_data "
                       "is true: the candidate takes over")  # fmt: skip
    c_ext, k_ext = extractor_of(candidate, metric), extractor_of(champion, metric)
    if c_ext.startswith("random-") and not k_ext.startswith("random-"):
        return d(False, f"candidate's {metric} was measured in random-weight features ({c_ext}), which cannot "
                        f"judge it; the champion's in {k_ext}: kept")  # fmt: skip
    if c_ext != k_ext:
        return d(True, f"champion's {metric} was measured with another extractor ({k_ext[:24]} vs "
                       f"{c_ext[:24]}): not comparable, the candidate takes over")  # fmt: skip
    if metric not in champion:
        return d(True, f"champion has no {metric}: not comparable, the candidate takes over")
    c, k = float(candidate[metric]), float(champion[metric])
    if c < k:
        return d(True, f"{metric} {c:.4g} beats the champion's {k:.4g}")
    if c == k and candidate.get("coverage", 0) > champion.get("coverage", 0):
        return d(
            True, f"{metric} ties at {c:.4g}; coverage {candidate['coverage']} beats {champion['coverage']}"
        )
    return d(False, f"{metric} {c:.4g} does not beat the champion's {k:.4g}")
