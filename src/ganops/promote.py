"""Should the evaluated generator become the champion? A pure decision (what stage `promote` applies).

Lower is better for every promotion metric (domain FID / KID, KL); a tie goes to higher class coverage.
Numbers are compared only like with like — same dataset content hash and same feature extractor. A
champion measured on other data (or with another extractor) cannot be compared: the candidate, measured
on the data the pipeline now trains on, takes over, and the decision says why. A candidate trained on a
subset of the data (``data.limit``, a smoke run) never takes over, nor does any candidate of a dry run.
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


def decide(
    candidate: dict[str, Any], champion: dict[str, Any] | None, metric: str, *, dry_run: bool = False
) -> Decision:
    """Decide whether ``candidate`` replaces ``champion`` on ``metric`` (lower is better).

    Args:
        candidate / champion: dicts with ``run_id``, ``dataset_hash``, ``extractor``, ``metric``,
            ``coverage`` (absent on unlabelled data) and ``data_limit`` (0 or absent: all the data).
        metric: the deciding metric's key.
        dry_run: decide and report, but never promote.
    """
    d = lambda ok, why: Decision(ok, why, metric, candidate, champion)  # noqa: E731
    if metric not in candidate:
        raise ValueError(f"candidate has no {metric!r} (metrics: {sorted(candidate)})")
    if int(candidate.get("data_limit") or 0) > 0:
        return d(False, f"candidate was trained on a subset (data.limit={int(candidate['data_limit'])}): "
                        "a smoke run never takes over")  # fmt: skip
    if dry_run:
        verdict = decide(candidate, champion, metric)
        return d(False, f"dry run (promote.dry_run): would {'promote' if verdict.promote else 'keep'}: "
                        f"{verdict.reason}")  # fmt: skip
    if champion is None:
        return d(True, "no champion yet")
    if champion.get("run_id") == candidate.get("run_id"):
        return d(False, "candidate is already the champion")
    for key in ("dataset_hash", "extractor"):
        if champion.get(key) != candidate.get(key):
            return d(True, f"champion was measured with another {key} ({str(champion.get(key))[:12]} vs "
                           f"{str(candidate.get(key))[:12]}): not comparable, the candidate takes over")  # fmt: skip
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
