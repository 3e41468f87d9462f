"""Stage ``promote``: register the evaluated generator and move the champion alias if it wins ->
``metrics/promote.json`` and the registry.

Two aliases move, each by the same rule (:func:`ganops.promote.decide`): ``promote.alias`` (``champion``,
what serving follows), which a generator of other data takes over only with ``promote.across_data``, and
the data line's own ``<alias>-<first 12 hex of the dataset hash>``, the best generator of that data, so a
new folder has a champion of its own without touching what is served.
"""

from __future__ import annotations

import json
from typing import Any

from ganops.config import Params
from ganops.promote import Decision, baseline_of, decide, resolve_metric
from ganops.stages.common import Layout, StageError, write_json
from ganops.tracking import (
    champion,
    log_to_run,
    register_generator,
    registry_lock,
    require_run,
    run_params,
    run_summary,
    set_alias,
    use_store,
)


def line_alias(alias: str, dataset_hash: str) -> str:
    """The alias of a data line's own champion: ``<alias>-<first 12 hex of the dataset hash>``."""
    return f"{alias}-{dataset_hash[:12]}"


def promote(p: Params, at: Layout = Layout()) -> tuple[Decision, dict[str, Any], dict[str, Any] | None]:
    """Stage `promote`; returns (Decision on ``promote.alias``, candidate facts, champion facts before).

    Compare-and-set: registering, reading the champions, deciding and moving the aliases all happen while
    this process holds the registry's promotion lock (tracking.registry_lock), so two concurrent promotions
    are serialised and the second one decides against whatever the first one left as champion.
    """
    path = at.metrics / "evaluate.json"
    if not path.is_file():
        raise StageError(f"{path} is missing: run `ganops evaluate` (or `dvc repro`) first")
    m = json.loads(path.read_text())
    name, alias = p.promote.model_name, p.promote.alias
    metric = resolve_metric(p.promote.metric, "vgg19" if "vgg_kid" in m else "domain")
    use_store(at.tracking)
    run_id = require_run(m.get("run_id"), str(path))
    # what the candidate was trained on, from its own run (not from today's params)
    facts = dict(m) | {"data_limit": int(run_params(run_id).get("data.limit", "0"))}
    own = line_alias(alias, str(m.get("dataset_hash", "")))
    base = baseline_of(m, metric)
    scored = (f"; {metric} {m[metric]:.4g}" + (f" beside real-vs-real {base:.4g}" if base is not None else "")
              if isinstance(m.get(metric), int | float) else "")  # fmt: skip
    with registry_lock(name):
        cand = register_generator(run_id, name, facts, "checkpoint_best" if m.get("export") == "best" else "checkpoint",
                                  description=f"{run_summary(run_id)}{scored} ({m.get('export', 'final')} export)",
                                  metric=metric)  # fmt: skip
        before = champion(name, alias)
        try:
            decision = decide(
                cand, before, metric, dry_run=p.promote.dry_run, across_data=p.promote.across_data
            )
            line = decide(cand, champion(name, own), metric, dry_run=p.promote.dry_run)
        except ValueError as err:
            raise StageError(str(err)) from None
        if decision.promote:
            set_alias(name, alias, cand["version"])
        if line.promote:
            set_alias(name, own, cand["version"])
    log_to_run(run_id, {}, {"promote_decision": "promoted" if decision.promote else "kept champion",
                            "promote_reason": decision.reason, "promote_line_alias": own,
                            "promote_line_decision": "promoted" if line.promote else "kept"})  # fmt: skip
    out = decision.to_dict() | {"data_line": {"alias": own, "promote": line.promote, "reason": line.reason}}
    write_json(at.metrics / "promote.json", out)
    return decision, cand, before
