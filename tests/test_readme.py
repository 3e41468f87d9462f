"""The README's map of the code ("Architecture", "Layout") names every module under src/, so a newcomer
reading it finds each file, and a new module cannot land without a line saying what it is."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "ganops"


def _section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(rf"^## {title}\n(.*?)(?=^## )", text, flags=re.S | re.M)
    assert m, f"README has no '## {title}' section"
    return m.group(1)


def _named(module: Path, text: str) -> bool:
    """``module`` (relative to the package) is named: by its path (``models/gan.py``), or by its file name
    on a line that names its folder (``tracking/ ... store.py``)."""
    rel = module.relative_to(PACKAGE).as_posix()
    if re.search(rf"(?<![\w/]){re.escape(rel)}\b", text):
        return True
    folder = module.parent.relative_to(PACKAGE).as_posix()
    if folder == ".":
        return False
    block = re.findall(rf"^.*{re.escape(folder)}/.*(?:\n {{4,}}.*)*", text, flags=re.M)
    return any(re.search(rf"\b{re.escape(module.name)}\b", b) for b in block)


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py")


@pytest.mark.parametrize("title", ["Architecture", "Layout"])
def test_every_module_is_named_in_the_readme_map(title):
    text = _section(title)
    missing = [m.relative_to(PACKAGE).as_posix() for m in MODULES if not _named(m, text)]
    assert not missing, f"README '{title}' does not name: {missing}"


def test_the_check_fails_for_a_module_it_does_not_name():
    # the rule itself: a file name alone (without its folder) or a near name does not count
    assert not _named(PACKAGE / "stages" / "prepare.py", "prepare.py stage prepare")
    assert _named(PACKAGE / "stages" / "prepare.py", "stages/  one module per stage: prepare.py, ...")
    assert not _named(PACKAGE / "train_state.py", "train_gan.py  the loop; train_states.py")
