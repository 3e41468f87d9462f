"""dvc.yaml lists, for every stage, each ganops module its command runs, so a code change re-runs the stage.

The module graph is computed from the code, never written down here: from a stage's ``cmd`` (``ganops
<command>``) to the CLI function, and from there through a static ``ast`` scan of names and imports
(function-level imports included). Two kinds of module:

- dispatch modules (``ganops.cli`` and ``ganops.stages``, a module or a package) are followed function by
  function: a command counts only the functions, classes and constants its code refers to, so that
  ``ganops prepare`` does not depend on the GAN loop just because ``stages`` imports error classes from
  everywhere. Exception classes named only in an ``except`` clause are not followed: catching an exception
  runs none of its module's code.
- every other module counts whole, with everything it imports, at module or function level.

``ganops/__init__.py`` and every package ``__init__.py`` on the way count too (importing a submodule runs
them). A dep covers a module when it is that file or a folder holding it.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
DISPATCH = ("ganops.cli", "ganops.stages")  # followed function by function (see the module docstring)


def _is_dispatch(module: str) -> bool:
    return any(module == d or module.startswith(d + ".") for d in DISPATCH)


@dataclass
class Module:
    name: str
    path: Path
    tree: ast.Module
    defs: dict[str, ast.AST] = field(default_factory=dict)  # top-level def / class / assigned name
    imports: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # local name -> (module, attr)
    stars: list[str] = field(default_factory=list)  # modules of `from x import *`

    @property
    def package(self) -> str:
        return self.name if self.path.name == "__init__.py" else self.name.rpartition(".")[0]


def _import_bindings(mod: Module, node: ast.Import | ast.ImportFrom) -> dict[str, tuple[str, str | None]]:
    """Local names an import statement binds -> (module, attribute or None), absolute names."""
    out: dict[str, tuple[str, str | None]] = {}
    if isinstance(node, ast.Import):
        for a in node.names:
            if a.asname:
                out[a.asname] = (a.name, None)
            else:  # `import ganops.x.y` binds `ganops`; the attribute chain reaches x.y
                out[a.name.split(".")[0]] = (a.name.split(".")[0], None)
        return out
    base = node.module or ""
    if node.level:
        parts = mod.package.split(".")
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join(parts + ([node.module] if node.module else []))
    for a in node.names:
        out[a.asname or a.name] = (base, a.name)
    return out


@cache
def modules() -> dict[str, Module]:
    """Every module under src/ganops, parsed, with its top-level definitions and imports."""
    out = {}
    for path in sorted((SRC / "ganops").rglob("*.py")):
        rel = path.relative_to(SRC).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        mod = Module(".".join(parts), path, ast.parse(path.read_text(), str(path)))
        for node in mod.tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                mod.defs[node.name] = node
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    for n in ast.walk(t):
                        if isinstance(n, ast.Name):
                            mod.defs[n.id] = node
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                bindings = _import_bindings(mod, node)
                if "*" in bindings:
                    mod.stars.append(bindings.pop("*")[0])
                mod.imports.update(bindings)
        out[mod.name] = mod
    return out


Target = tuple[str, str | None]  # (module, None) = the module; (module, name) = one of its top-level names


def _lookup(module: str, name: str, seen: frozenset[Target] = frozenset()) -> Target | None:
    """What ``module.name`` is: a top-level definition, a re-exported import, a submodule."""
    mods = modules()
    if module not in mods or (module, name) in seen:
        return None
    m = mods[module]
    if name in m.defs:
        return (module, name)
    if name in m.imports:
        return _target(m.imports[name], seen | {(module, name)})
    if f"{module}.{name}" in mods:
        return (f"{module}.{name}", None)
    for star in m.stars:
        t = _lookup(star, name, seen | {(module, name)})
        if t is not None and t != (star, None):
            return t
    return (module, None)  # an attribute we cannot see (set at run time): the whole module


def _target(binding: tuple[str, str | None], seen: frozenset[Target] = frozenset()) -> Target | None:
    module, attr = binding
    if not (module == "ganops" or module.startswith("ganops.")):
        return None
    if attr is None:
        return (module, None)
    if f"{module}.{attr}" in modules():
        return (f"{module}.{attr}", None)
    return _lookup(module, attr, seen)


def _chains(node: ast.AST) -> list[list[str]]:
    """Dotted names the code of ``node`` refers to (``stages.train_gan`` -> [stages, train_gan]).

    Left out: annotations (strings under ``from __future__ import annotations``) and the exception types of
    ``except`` clauses (see the module docstring).
    """
    out: list[list[str]] = []

    def visit(n: ast.AST) -> None:
        if isinstance(n, ast.Attribute):
            parts, cur = [], n
            while isinstance(cur, ast.Attribute):
                parts.append(cur.attr)
                cur = cur.value
            if isinstance(cur, ast.Name):
                out.append([cur.id, *reversed(parts)])
            else:
                visit(cur)
        elif isinstance(n, ast.Name):
            out.append([n.id])
        elif isinstance(n, ast.arg):
            return
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for c in [*n.decorator_list, n.args, *n.body]:
                visit(c)
        elif isinstance(n, ast.AnnAssign):
            if n.value is not None:
                visit(n.value)
        elif isinstance(n, ast.ExceptHandler):
            for c in n.body:
                visit(c)
        else:
            for c in ast.iter_child_nodes(n):
                visit(c)

    visit(node)
    return out


def _follow(module: str, node: ast.AST) -> list[Target]:
    """Targets a top-level definition of a dispatch module refers to, and the non-dispatch modules its
    function-level imports run."""
    m = modules()[module]
    local: dict[str, tuple[str, str | None]] = {}
    found: list[Target] = []
    for n in ast.walk(node):
        if isinstance(n, (ast.Import, ast.ImportFrom)):
            for binding in _import_bindings(m, n).items():
                local[binding[0]] = binding[1]
                t = _target(binding[1])
                if t is not None and not _is_dispatch(t[0]):
                    found.append(t)  # an import statement runs its module when the function runs
    for chain in _chains(node):
        head, rest = chain[0], chain[1:]
        if head in local:
            t = _target(local[head])
        elif head in m.imports:
            t = _target(m.imports[head])
        elif head in m.defs:
            t = (module, head)
        else:
            continue  # a local variable, a parameter, a builtin
        while t is not None and t[1] is None and rest and _is_dispatch(t[0]):
            t, rest = _lookup(t[0], rest[0]), rest[1:]
        if t is not None:
            found.append(t)
    return found


def closure(entries: list[Target]) -> set[str]:
    """The ganops modules that running ``entries`` runs, package ``__init__`` modules included."""
    mods = modules()
    done: set[Target] = set()
    out: set[str] = set()
    stack = list(entries)
    while stack:
        t = stack.pop()
        if t in done or t[0] not in mods:
            continue
        done.add(t)
        module, name = t
        out.add(module)
        if _is_dispatch(module):
            if name is not None:
                stack += _follow(module, mods[module].defs[name])
            continue
        if name is not None:  # a library symbol: its module counts whole
            stack.append((module, None))
            continue
        m = mods[module]
        for n in ast.walk(m.tree):
            if isinstance(n, (ast.Import, ast.ImportFrom)):
                stack += [t2 for b in _import_bindings(m, n).values() if (t2 := _target(b)) is not None]
    for module in list(out):  # importing a.b.c runs a/__init__ and a/b/__init__ first
        parts = module.split(".")
        out |= {".".join(parts[:i]) for i in range(1, len(parts))}
    return out


def cli_commands() -> dict[str, str]:
    """``ganops`` command name -> the function of ganops.cli that runs it."""
    out = {}
    for node in modules()["ganops.cli"].tree.body:
        if not isinstance(node, ast.FunctionDef):
            continue
        for d in node.decorator_list:
            if isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.func.attr == "command":
                name = d.args[0].value if d.args and isinstance(d.args[0], ast.Constant) else None
                out[name or node.name.replace("_", "-")] = node.name
    return out


def _callbacks() -> list[Target]:
    """The app's callbacks (``@app.callback()``): they run before every command."""
    return [("ganops.cli", n.name) for n in modules()["ganops.cli"].tree.body
            if isinstance(n, ast.FunctionDef) and any(isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute)
                                                      and d.func.attr == "callback" for d in n.decorator_list)]  # fmt: skip


def stage_modules(cmd: str) -> set[str]:
    """The ganops modules a dvc.yaml ``cmd`` runs."""
    words = cmd.split()
    assert words[0] == "ganops", f"{cmd!r}: a stage runs `ganops <command>`"
    fn = cli_commands()[words[1]]
    return closure([("ganops.cli", fn), ("ganops.config", None), *_callbacks()])


def module_file(module: str) -> str:
    return modules()[module].path.relative_to(ROOT).as_posix()


def dvc_stages() -> dict[str, dict]:
    """dvc.yaml's stages, a ``foreach`` stage as its ``do`` (deps with ``${...}`` left as written)."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: s.get("do", s) for name, s in stages.items()}


def _deps(stage: dict) -> list[str]:
    return [str(d).rstrip("/") for d in stage.get("deps", [])]


STAGES = dvc_stages()


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_list_every_module_its_command_runs(name):
    stage = STAGES[name]
    deps = _deps(stage)
    needed = sorted(module_file(m) for m in stage_modules(stage["cmd"]))
    missing = [f for f in needed if not any(f == d or f.startswith(d + "/") for d in deps)]
    assert not missing, (
        f"dvc.yaml stage {name!r} runs these modules but does not list them in deps: {missing}"
    )


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_code_deps_exist_and_are_run(name):
    # the other direction: a listed source file that the stage no longer runs (or that is gone) re-runs the
    # stage for nothing, or hides a rename
    stage = STAGES[name]
    needed = {module_file(m) for m in stage_modules(stage["cmd"])}
    for d in _deps(stage):
        if not d.startswith("src/"):
            continue
        assert (ROOT / d).exists(), f"dvc.yaml stage {name!r}: dep {d} does not exist"
        assert any(f == d or f.startswith(d + "/") for f in needed), (
            f"dvc.yaml stage {name!r}: dep {d} is not run by `{stage['cmd']}`"
        )


def test_graph_follows_stages_function_by_function():
    # a sanity check of the scan itself on facts that hold for any layout of the code
    prepare = stage_modules("ganops prepare")
    assert {"ganops", "ganops.cli", "ganops.config", "ganops.data"} <= prepare
    assert not any(m.startswith("ganops.train_gan") for m in prepare)  # only the GAN stage runs the loop
    assert any(m.startswith("ganops.train_gan") for m in stage_modules("ganops train-gan"))
    assert any(m.startswith("ganops.models.gan") for m in stage_modules("ganops evaluate"))
    assert set(cli_commands()) >= {"prepare", "train-gan", "classifier", "evaluate", "promote", "stylize"}


def test_every_stage_runs_a_known_command():
    for name, stage in STAGES.items():
        words = stage["cmd"].split()
        assert words[:1] == ["ganops"] and words[1] in cli_commands(), (name, stage["cmd"])


def test_interpolated_deps_name_params_keys():
    # `${data.root}` and the like must name real params keys (a typo would make DVC fail at `dvc repro`).
    # The config's keys, which are params.yaml's (tests/test_config.py); never the working copy's values.
    from ganops.config import Params

    keys = set(Params().flat())
    refs = [(name, d, ref) for name, stage in STAGES.items() for d in _deps(stage)
            for ref in re.findall(r"\$\{([^}]+)\}", d)]  # fmt: skip
    assert refs  # the check below checks something
    for name, d, ref in refs:
        assert ref in keys, f"{name}: {d} names unknown {ref}"
