"""Stage ``promote``: register the evaluated generator and move the champion alias if it wins ->
``metrics/promote.json`` and the registry."""

from __future__ import annotations

import json
from typing import Any

from ganops.config import Params
from ganops.promote import Decision, decide
from ganops.stages.common import Layout, StageError, write_json
from ganops.tracking import (
    champion,
    log_to_run,
    register_generator,
    registry_lock,
    require_run,
    run_params,
    set_alias,
    use_store,
)


def promote(p: Params, at: Layout = Layout()) -> tuple[Decision, dict[str, Any], dict[str, Any] | None]:
    """Stage `promote`; returns (Decision, candidate facts, champion facts before the decision).

    Compare-and-set: registering, reading the champion, deciding and moving the alias all happen while
    this process holds the registry's promotion lock (tracking.registry_lock), so two concurrent promotions
    are serialised and the second one decides against whatever the first one left as champion.
    """
    path = at.metrics / "evaluate.json"
    if not path.is_file():
        raise StageError(f"{path} is missing: run `ganops evaluate` (or `dvc repro`) first")
    m = json.loads(path.read_text())
    name, alias = p.promote.model_name, p.promote.alias
    use_store(at.tracking)
    run_id = require_run(m.get("run_id"), str(path))
    # what the candidate was trained on, from its own run (not from today's params)
    facts = m | {"data_limit": int(run_params(run_id).get("data.limit", "0"))}
    with registry_lock(name):
        cand = register_generator(
            run_id, name, facts, "checkpoint_best" if m.get("export") == "best" else "checkpoint"
        )
        before = champion(name, alias)
        try:
            decision = decide(cand, before, p.promote.metric, dry_run=p.promote.dry_run)
        except ValueError as err:
            raise StageError(str(err)) from None
        if decision.promote:
            set_alias(name, alias, cand["version"])
    log_to_run(run_id, {}, {"promote_decision": "promoted" if decision.promote else "kept champion",
                            "promote_reason": decision.reason})  # fmt: skip
    write_json(at.metrics / "promote.json", decision.to_dict())
    return decision, cand, before
