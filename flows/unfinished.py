"""What a starting flow run does about flow runs of this project that ended before they finished.

A worker killed with its flow run (or a flow run cancelled or crashed mid-way) leaves a workspace with no
``DONE.json`` and a lock nobody holds any more (the kernel dropped it with the process); a killed one also
leaves an MLflow run marked RUNNING and, in Prefect, a flow run shown Running for ever (nothing is left to
report its end, and `prefect flow-run retry` refuses a run that is not finished). The next flow run of the
project names each such workspace and says how to continue it: ``prefect flow-run retry <id>`` runs the same
flow run again in the same workspace, so training resumes from its checkpoint. It also settles what the
dead process could not: the abandoned MLflow run is marked KILLED (the resume reopens it) and a Prefect flow
run still Running (or Cancelling) is marked Crashed, so that the retry is accepted.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

from ganops import stages, workspaces
from ganops.stages.common import read_run_file
from ganops.tracking import end_abandoned_run


def tell_unfinished(root: Path, log: logging.Logger | logging.LoggerAdapter) -> list[str]:
    """Warn about every unfinished flow-run workspace under ``root`` and settle its states; returns their
    flow-run ids (the folder names)."""
    ids = []
    for work in workspaces.unfinished(root):
        at = stages.Layout(root=work, tracking_root=root)
        try:
            run_id = read_run_file(at).get("mlflow_run_id")
        except ValueError:  # a damaged run.json: the message still goes out
            run_id = None
        if workspaces.held(work):  # a retry took it up meanwhile: it is not abandoned
            continue
        marked = bool(run_id) and end_abandoned_run(run_id)
        crashed = _mark_crashed(work.name, log)
        log.warning(
            "flow run %s ended before it finished (killed with its worker, cancelled or crashed)%s%s%s. To "
            "continue it: `prefect flow-run retry %s`; to drop its workspace: `ganops gc`",
            work.name,
            f"; its workspace {work} keeps a checkpoint that the retry resumes from"
            if (at.gan / "checkpoint.pt").is_file() else "",
            f"; its MLflow run {run_id} is marked KILLED" if marked else "",
            f"; Prefect showed it {crashed} with nothing running it: marked Crashed" if crashed else "",
            work.name,
        )  # fmt: skip
        ids.append(work.name)
    return ids


def _mark_crashed(flow_run_id: str, log: logging.Logger | logging.LoggerAdapter) -> str:
    """Set Prefect flow run ``flow_run_id`` Crashed if it still shows a live state (its process is gone: its
    workspace lock was dropped); returns the state it showed, or "" when it was left alone."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.exceptions import ObjectNotFound
    from prefect.states import Crashed

    try:
        run_uuid = uuid.UUID(flow_run_id)
    except ValueError:  # "local": a flow called outside Prefect
        return ""
    try:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(run_uuid).state
            if state is None or state.type not in (
                StateType.RUNNING,
                StateType.CANCELLING,
                StateType.PENDING,
            ):
                return ""
            client.set_flow_run_state(
                run_uuid, Crashed(message="its process ended without reporting (its workspace lock was "
                                          "dropped): marked by the next flow run of the project"), force=True
            )  # fmt: skip
            return state.name
    except ObjectNotFound:  # deleted, or another server's
        return ""
    except Exception as err:  # noqa: BLE001 - telling must never fail the flow run that tells
        log.warning("could not check the Prefect state of flow run %s: %s", flow_run_id, err)
        return ""
