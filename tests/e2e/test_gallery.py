"""The gallery (/ui/) in headless Chromium against the live service: what a person sees and clicks; and
HTML in the names it shows (model, style, upload) stays text."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from PIL import Image

from ganops.tracking import set_alias
from tests.e2e.serving_env import register_style_net, serve, train_version

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not (shutil.which("chromium") and shutil.which("chromedriver")),
        reason="no chromium/chromedriver (`make browser` installs them)",
    ),
]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    profile = tmp_path_factory.mktemp("chromium")
    for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}"]:  # fmt: skip
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    yield driver
    driver.quit()


def _loaded(el) -> bool:  # noqa: ANN001 - a selenium WebElement
    return el.get_attribute("naturalWidth") not in (None, "0") and not el.get_attribute("hidden")


def test_gallery_shows_the_champion_draws_on_load_and_redraws_a_class(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    base, facts = server
    browser.get(base + "/ui/")
    wait = WebDriverWait(browser, 30)
    grid = browser.find_element(By.ID, "grid")
    wait.until(lambda d: _loaded(grid))  # a grid on first load, no click
    model = browser.find_element(By.ID, "model").text
    assert f"ganops-generator v{facts['version']}" in model and facts["dataset_hash"][:12] in model
    metrics = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#metrics tbody tr")]
    assert "domain_fid 1.5 0.25" in metrics  # the champion's FID next to the real-vs-real baseline
    versions = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#versions tbody tr")]
    assert len(versions) == 1 and versions[0].startswith(f"v{facts['version']} (champion)")

    first = grid.get_attribute("src")
    browser.find_element(By.ID, "seed").send_keys("7")
    Select(browser.find_element(By.ID, "label")).select_by_visible_text("3")  # the champion is conditional
    browser.find_element(By.ID, "generate").click()
    wait.until(lambda d: grid.get_attribute("src") != first and _loaded(grid))
    assert int(grid.get_attribute("naturalWidth")) == 4 * 18 + 2  # 16 images, 16 px tiles
    info = browser.find_element(By.ID, "info").text
    assert info == f"seed 7, 16 images, class 3, model v{facts['version']}"


def test_gallery_styles_an_uploaded_photo(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    base, _ = server
    photo = tmp_path / "photo.png"
    Image.new("RGB", (48, 40), (30, 120, 200)).save(photo)
    browser.get(base + "/ui/")
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: [o.text for o in Select(d.find_element(By.ID, "style")).options] == ["waves"])
    browser.find_element(By.ID, "photo").send_keys(str(photo))
    browser.find_element(By.ID, "stylize").click()
    styled = browser.find_element(By.ID, "styled")
    wait.until(lambda d: _loaded(styled) or d.find_element(By.ID, "styleerror").text)
    assert browser.find_element(By.ID, "styleerror").text == ""
    assert (int(styled.get_attribute("naturalWidth")), int(styled.get_attribute("naturalHeight"))) == (48, 40)
    browser.save_screenshot(str(tmp_path / "gallery.png"))


# run by a browser if inserted as HTML: the broken image's onerror renames the page
HOSTILE = "<img src=x onerror=\"document.title='pwned'\">"


@pytest.fixture(scope="module")
def hostile():
    """A registry whose served generator and style net carry HTML in their names (the style's run name too)."""
    tmp = Path(tempfile.mkdtemp(prefix="ganops-serve-hostile-"))
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    name = "gen " + HOSTILE
    try:
        facts = train_version(tmp, uri, name=name)
        os.environ["MLFLOW_TRACKING_URI"] = uri
        try:
            set_alias(name, "champion", facts["version"])
            register_style_net(tmp, style=HOSTILE)
        finally:
            del os.environ["MLFLOW_TRACKING_URI"]
        with serve(tmp, uri, GANOPS_MODEL_NAME=name) as base:
            yield base, name
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_html_in_names_and_upload_filenames_is_shown_as_text_never_run(hostile, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    base, name = hostile
    browser.get(base + "/ui/")
    wait = WebDriverWait(browser, 30)
    grid = browser.find_element(By.ID, "grid")
    wait.until(lambda d: _loaded(grid))
    wait.until(lambda d: [o.text for o in Select(d.find_element(By.ID, "style")).options] == [HOSTILE])
    assert f"serving {name} v1" in browser.find_element(By.ID, "model").text  # the name, as text
    photo = tmp_path / (HOSTILE + ".png")  # a hostile upload file name too
    Image.new("RGB", (40, 40), (30, 120, 200)).save(photo)
    browser.find_element(By.ID, "photo").send_keys(str(photo))
    browser.find_element(By.ID, "stylize").click()
    styled = browser.find_element(By.ID, "styled")
    wait.until(lambda d: _loaded(styled) or d.find_element(By.ID, "styleerror").text)
    assert browser.find_element(By.ID, "styleerror").text == ""  # styled by the hostile-named net
    assert browser.title != "pwned" and browser.find_elements(By.CSS_SELECTOR, "img[src='x']") == []
    # control: the same string, inserted as HTML, does run here (so the check above can fail)
    browser.execute_script("document.body.insertAdjacentHTML('beforeend', arguments[0])", HOSTILE)
    wait.until(lambda d: d.title == "pwned")
