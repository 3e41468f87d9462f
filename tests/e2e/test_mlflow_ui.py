"""The MLflow UI as the place to compare runs, in headless Chromium: `mlflow ui` on the store of two tiny
trainings (`ganops prepare`, then `ganops train-gan` twice with another `gan.lr_g` and step count). The
experiment page lists both runs by their names with the prepared data's digest; the compare page shows the
parameter that differs; the second run, evaluated and promoted, is a registered version whose page describes
it. ``GANOPS_SCREENSHOTS=<folder>`` keeps the three pages as PNGs (the README's).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.e2e.project import project_env
from tests.e2e.servers import start_server, stop

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not (shutil.which("chromium") and shutil.which("chromedriver")),
        reason="no chromium/chromedriver (`make browser` installs them)",
    ),
]
TINY = ["-S", "data.image_size=16", "-S", "data.limit=64", "-S", "gan.batch_size=16", "-S", "gan.ngf=4",
        "-S", "gan.ndf=4", "-S", "gan.latent_dim=8", "-S", "gan.sample_every=2", "-S", "gan.checkpoint_every=2",
        "-S", "gan.monitor_every=0"]  # fmt: skip


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1500,800", f"--user-data-dir={tmp_path / 'chromium'}"]:  # fmt: skip
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    yield driver
    driver.quit()


def test_the_experiment_page_names_runs_and_their_data_and_compare_shows_what_differs(
    tmp_path, monkeypatch, isolated_tracking, browser
):
    from mlflow import MlflowClient
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from ganops.cli import app
    from tests.conftest import PARAMS

    shutil.copy(PARAMS, tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    assert runner.invoke(app, ["prepare", *TINY]).exit_code == 0
    for lr, steps in (("0.0002", 4), ("0.0005", 6)):
        r = runner.invoke(
            app, ["train-gan", "--no-progress", *TINY, "-S", f"gan.lr_g={lr}", "-S", f"gan.steps={steps}"]
        )
        assert r.exit_code == 0, r.output
    for stage in (
        ["classifier", "-S", "classifier.epochs=1"],
        ["evaluate", "-S", "evaluate.kid_subset_size=8"],
        ["promote"],
    ):  # the second (last) training becomes version 1
        r = runner.invoke(app, [*stage, *TINY])
        assert r.exit_code == 0, r.output
    digest = json.loads((tmp_path / "data/prepared/manifest.json").read_text())["content_hash"][:32]
    c = MlflowClient(isolated_tracking)
    exp = c.get_experiment_by_name("ganops")
    runs = c.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    assert [r.info.run_name for r in runs] == ["dcgan-digits-16px-4", "dcgan-digits-16px-6"]

    def launch(port: int) -> subprocess.Popen:
        return subprocess.Popen(["mlflow", "ui", "--backend-store-uri", isolated_tracking, "--host", "127.0.0.1",
                                 "--port", str(port)], cwd=tmp_path, env=project_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip

    proc, port = start_server(launch, "/health")
    shots = Path(os.environ.get("GANOPS_SCREENSHOTS", tmp_path))
    try:
        wait = WebDriverWait(browser, 60)
        browser.get(f"http://127.0.0.1:{port}/#/experiments/{exp.experiment_id}/runs")
        body = browser.find_element(By.TAG_NAME, "body")
        wait.until(lambda _: "dcgan-digits-16px-6" in body.text)
        text = body.text
        assert "dcgan-digits-16px-4" in text and "one run per training" in text  # the names, the description
        assert text.count(f"digits ({digest})") == 2  # the Dataset column: each run's data and its digest
        browser.save_screenshot(str(shots / "mlflow_ui_runs.png"))

        ids = json.dumps([r.info.run_id for r in runs])
        browser.get(f'http://127.0.0.1:{port}/#/compare-runs?runs={ids}&experiments=["{exp.experiment_id}"]')
        wait.until(lambda _: "gan.lr_g" in browser.find_element(By.TAG_NAME, "body").text)
        rows = browser.find_element(By.TAG_NAME, "body").text.splitlines()
        assert "gan.lr_g 0.0002 0.0005" in rows and "gan.lr_d 0.0002 0.0002" in rows  # differs / does not
        browser.save_screenshot(str(shots / "mlflow_ui_compare.png"))

        browser.get(f"http://127.0.0.1:{port}/#/models/ganops-generator/versions/1")
        wait.until(lambda _: "promotion_metric" in browser.find_element(By.TAG_NAME, "body").text)
        text = browser.find_element(By.TAG_NAME, "body").text
        # the description: what was trained, its run, the promotion metric beside its baseline; short tags
        assert (
            f"dcgan generator, digits at 16 px, 6 steps; run dcgan-digits-16px-6 ({runs[1].info.run_id})"
            in text
        )
        assert "domain_fid" in text and "beside real-vs-real" in text and "metric.kl" not in text
        browser.save_screenshot(str(shots / "mlflow_ui_version.png"))
    finally:
        stop(proc)
