"""Real DVC: editing any source file a stage lists in dvc.yaml marks that stage changed in `dvc status`.

No stage runs: stub outputs and `dvc commit -f` record a lock, then one comment appended to every listed
module, then one `dvc status --json` (a few seconds). tests/test_dvc_deps.py proves the list is complete.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.project import new_project, project_env, sh

pytestmark = pytest.mark.e2e


def _stub(path: Path) -> None:
    """A placeholder for a stage output or generated input: a file if it has a suffix, else a folder."""
    if path.exists():
        return
    if path.suffix:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}\n")
    else:
        path.mkdir(parents=True, exist_ok=True)
        (path / "stub").write_text("stub\n")


def test_touching_a_listed_module_marks_its_stage_changed(tmp_path):
    from dvc.repo import Repo

    env = project_env()
    d = tmp_path / "p"
    new_project(d, env, lambda params: None, copy=("src",))
    sh(["git", "add", "-A"], d, env)
    sh(["git", "commit", "-qm", "project"], d, env)
    with Repo(str(d)) as repo:  # DVC resolves foreach and ${...} itself
        stages = list(repo.index.stages)
    listed: dict[str, list[str]] = {}
    for st in stages:
        for o in [*st.deps, *st.outs]:
            _stub(Path(o.fs_path))  # after the git commit: outputs are DVC's, never git's
        paths = {Path(dep.fs_path).relative_to(d).as_posix() for dep in st.deps}
        listed[st.name] = sorted(p for p in paths if p.startswith("src/"))
    assert all(listed.values()), f"a stage lists no source file: {listed}"
    sh(["dvc", "commit", "-f"], d, env)
    assert json.loads(sh(["dvc", "status", "--json"], d, env).stdout or "{}") == {}

    for f in sorted({f for files in listed.values() for f in files}):
        with open(d / f, "a") as fh:
            fh.write("# touched\n")
    status = json.loads(sh(["dvc", "status", "--json"], d, env).stdout)
    for stage, files in listed.items():
        changed = {
            path
            for entry in status.get(stage, [])
            if isinstance(entry, dict)
            for path, what in entry.get("changed deps", {}).items()
            if what == "modified"
        }
        assert set(files) <= changed, f"{stage}: `dvc status` missed {sorted(set(files) - changed)}"
