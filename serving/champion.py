"""What the service serves, and following the registry: the champion generator and the style nets.

``Follower.current`` is one immutable ``Served`` (generator + its registry facts + the style nets): a
request reads it once and uses only that object, so its images, its ``X-Model-Version`` header and
``/model`` all describe the same version. A switch builds a complete new ``Served`` first, then replaces
the reference in one assignment (atomic in Python): requests already running finish on the old one.

A daemon thread asks the registry every ``poll_s`` seconds whether ``<name>@<alias>`` (or a style's
alias) moved; ``refresh()`` does the same on demand (POST /reload). Registry calls go through
``ganops.tracking``.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ganops.artifacts import DamagedFileError
from ganops.tracking import STYLE_PREFIX

log = logging.getLogger("ganops.serving")


@dataclass(frozen=True)
class Served:
    G: torch.nn.Module
    facts: dict[str, Any]  # version, run_id, dataset_hash, extractor and the version's metrics
    shape: dict[str, Any]  # image_size, channels, latent_dim, class_counts
    styles: dict[str, torch.nn.Module] = field(default_factory=dict)  # style name -> fast net
    style_versions: dict[str, int] = field(default_factory=dict)  # registered model name -> version

    @property
    def version(self) -> int:
        return int(self.facts["version"])


def _fetch(model: str, version: int, load: Callable[[Path], Any]) -> Any:
    """``load`` the files of ``model`` v``version``, fetched into a temp folder that is removed afterwards
    (a service polling a refused version for hours must not fill its disk with copies).

    Raises:
        DamagedVersion: a file is damaged, or missing (its upload has not finished, or was cut short).
    """
    from ganops.tracking import download_version

    with tempfile.TemporaryDirectory(prefix="ganops-fetch-") as tmp:
        try:
            return load(download_version(model, version, Path(tmp)))
        except DamagedFileError as err:  # refused: never served, whatever serves now goes on
            raise DamagedVersion(
                f"{model} v{version} is damaged in the artifact store ({err}): register a good version "
                f"(run the pipeline again) or point {model}@alias at another version"
            ) from None
        except FileNotFoundError as err:
            raise DamagedVersion(
                f"{model} v{version} is incomplete in the artifact store ({Path(err.filename or '?').name} "
                "is missing: still being uploaded, or the upload was cut short); it is tried again at the "
                f"next check; if it stays so, register a good version or point {model}@alias at another"
            ) from None


def _load_generator(
    name: str, facts: dict[str, Any], device: torch.device
) -> tuple[torch.nn.Module, dict[str, Any]]:
    from ganops.models.gan import load_generator

    G = _fetch(name, facts["version"], lambda folder: load_generator(folder, device=device))
    if device.type == "cuda":  # NHWC: what tensor-core convolutions want
        G = G.to(memory_format=torch.channels_last)
    cfg = G.cfg
    shape = {"image_size": cfg.image_size, "channels": cfg.channels, "latent_dim": cfg.latent_dim,
             "class_counts": list(cfg.class_counts)}  # fmt: skip
    return G, shape


def _load_style(model: str, version: int) -> torch.nn.Module:
    from ganops.models.style import load_style_net

    return _fetch(model, version, load_style_net)


class DamagedVersion(RuntimeError):
    """A registered version's files are damaged or missing: it is refused (at start the server stops, saying
    which; while serving, the version held goes on and the refused one is tried again at the next check)."""


class NoChampion(LookupError):
    """The registry has no ``name@alias`` to serve (a setup problem: nothing to retry until the pipeline ran)."""


class Follower:
    """Loads ``name@alias`` (+ every ``ganops-style-*@alias``) at start and follows the aliases."""

    def __init__(self, name: str, alias: str, poll_s: float, device: torch.device | None = None) -> None:
        from ganops.tracking import champion, use_store

        use_store()
        self.name, self.alias, self.poll_s = name, alias, poll_s
        self.device = device or torch.device("cpu")  # the generator's; style nets stay on the CPU
        self._lock = threading.Lock()  # one refresh at a time (poll thread vs POST /reload)
        facts = champion(name, alias)
        if facts is None:
            raise NoChampion(
                f"no model {name}@{alias} in the MLflow store: run the pipeline (`dvc repro` or `make demo`) "
                "so that `ganops promote` registers and promotes a generator"
            )
        G, shape = _load_generator(name, facts, self.device)
        self.current = self._with_styles(Served(G, facts, shape))
        self.versions = self._versions()
        self.last_check = time.time()
        if poll_s > 0:
            threading.Thread(target=self._poll, name="ganops-champion-poll", daemon=True).start()

    def _versions(self) -> list[dict[str, Any]]:
        from ganops.tracking import model_versions

        return model_versions(self.name)

    def _with_styles(self, s: Served) -> Served:
        """``s`` with the style nets the registry names now (reusing loaded ones whose version is unchanged)."""
        from ganops.tracking import aliased_with_prefix

        wanted = aliased_with_prefix(STYLE_PREFIX, self.alias)
        old = self.current if hasattr(self, "current") else None
        styles = {}
        for model, version in sorted(wanted.items()):
            style = model.removeprefix(STYLE_PREFIX)
            if old is not None and old.style_versions.get(model) == version:
                styles[style] = old.styles[style]
            else:
                styles[style] = _load_style(model, version)
        return Served(s.G, s.facts, s.shape, styles, wanted)

    def refresh(self) -> bool:
        """Switch to what the aliases name now, if that changed; True if it did."""
        from ganops.tracking import aliased_with_prefix, champion

        with self._lock:
            cur = self.current
            facts = champion(self.name, self.alias)
            styles_moved = aliased_with_prefix(STYLE_PREFIX, self.alias) != cur.style_versions
            self.versions, self.last_check = self._versions(), time.time()  # new candidates show up too
            if facts is None:  # alias deleted: keep serving what we have rather than nothing
                log.warning("%s@%s is gone from the registry; still serving v%s", self.name, self.alias,
                            cur.version)  # fmt: skip
                return False
            if facts["version"] == cur.version and not styles_moved:
                return False
            if facts["version"] == cur.version:
                G, shape = cur.G, cur.shape
            else:
                G, shape = _load_generator(self.name, facts, self.device)
            new = self._with_styles(Served(G, facts, shape))
            self.current = new  # the switch: one reference assignment
            log.info("now serving %s v%s (was v%s), styles %s", self.name, new.version, cur.version,
                     sorted(new.styles))  # fmt: skip
            return True

    def _poll(self) -> None:
        refused = ""  # the last refusal, logged once (not every poll) until something else happens
        while True:
            time.sleep(self.poll_s)
            try:
                self.refresh()
                refused = ""
            except DamagedVersion as err:
                if str(err) != refused:
                    log.error("%s; still serving v%s", err, self.current.version)
                refused = str(err)
            except Exception:  # noqa: BLE001 - a registry hiccup must not end the following
                log.exception("checking the registry for a new %s@%s failed; retrying", self.name, self.alias)
