"""The page at /ui in a real headless Chromium, against a real uvicorn serving the shipped
models: score a shipped fraud sample and see DECLINE, pick the other model and score with it,
see the live panel fill, see a wrong key's error. The screenshot lands in test-artifacts/ui.png."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ready
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.conftest import ROOT, TEST_API_KEY, LiveServer, start_server, stop_server
from tests.model_edits import make_version

SHIPPED = ROOT / "models" / "creditcard" / "4"
MOBILE = ROOT / "models" / "mobile-money" / "4"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
WAIT_S = 20
NO_VALUE = "\u2013"  # the panel's dash before its first figures


@pytest.fixture(scope="module")
def shipped_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    log = tmp_path_factory.mktemp("ui") / "uvicorn.log"
    # Every shipped model, as make serve serves them.
    env = {"FRAUD_MODEL_NAME": "", "FRAUD_DEFAULT_MODEL": "creditcard"}
    server = start_server(SHIPPED, log, env)
    yield server
    stop_server(server)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # No network here: background networking would make Chromium stall.
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,900",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(WAIT_S)
    yield driver
    driver.quit()


def declined_fraud_sample(server: LiveServer, folder: Path = SHIPPED) -> int:
    """The index of a shipped fraud sample that the model in `folder` declines."""
    rows = json.loads((folder / "samples.json").read_text())["rows"]
    route = f"/v1/models/{folder.parent.name}/score"
    with server.client(headers={"X-API-Key": TEST_API_KEY}) as client:
        for index, row in enumerate(rows):
            if row["fraud"]:
                answer = client.post(route, json={"features": row["features"]}).json()
                if answer["decision"] == "DECLINE":
                    return index
    raise AssertionError("no shipped fraud sample is declined")


def connect(driver: webdriver.Chrome, server: LiveServer, key: str) -> None:
    driver.get(f"{server.base_url}/ui/")
    field = driver.find_element(By.ID, "api-key")
    field.clear()
    field.send_keys(key)
    driver.find_element(By.ID, "connect").click()


def test_a_shipped_fraud_sample_is_declined(
    shipped_server: LiveServer, browser: webdriver.Chrome
) -> None:
    index = declined_fraud_sample(shipped_server)
    connect(browser, shipped_server, TEST_API_KEY)
    wait = WebDriverWait(browser, WAIT_S)
    wait.until(lambda d: d.find_element(By.ID, "sample").is_enabled())
    assert browser.find_element(By.ID, "model").text == "creditcard version 4"
    # The form follows the model: one field per feature, in model order.
    names = [
        i.get_attribute("name") for i in browser.find_elements(By.CSS_SELECTOR, "#features input")
    ]
    assert names == json.loads((SHIPPED / "samples.json").read_text())["feature_names"]
    Select(browser.find_element(By.ID, "sample")).select_by_value(str(index))
    browser.find_element(By.ID, "score").click()
    wait.until(ready.text_to_be_present_in_element((By.ID, "decision"), "DECLINE"))
    probability = float(browser.find_element(By.ID, "probability").text)
    assert probability >= 0.9
    assert browser.find_element(By.ID, "version").text == "4"
    assert browser.find_element(By.ID, "rtt").text.endswith(" ms")
    assert browser.find_element(By.ID, "error").is_displayed() is False
    # Why: a bar per reason, the feature that raised the probability most first.
    reasons = browser.find_elements(By.CSS_SELECTOR, "#reasons .reason")
    features = json.loads((SHIPPED / "samples.json").read_text())["feature_names"]
    assert 1 <= len(reasons) <= 3
    assert all(r.find_element(By.CLASS_NAME, "feature").text in features for r in reasons)
    shown = [float(r.find_element(By.CLASS_NAME, "contribution").text) for r in reasons]
    assert shown == sorted(shown, reverse=True) and shown[0] > 0
    # The live panel polls /v1/stats every 2 s and shows the traffic it saw.
    wait.until(lambda d: d.find_element(By.ID, "p99").text not in ("", NO_VALUE))
    assert float(browser.find_element(By.ID, "p99").text) > 0
    assert float(browser.find_element(By.ID, "rps").text) > 0
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#rps-line polyline"))
    ARTIFACTS.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "ui.png"))


def test_the_other_model_can_be_picked_and_scores_with_its_own_features(
    shipped_server: LiveServer, browser: webdriver.Chrome
) -> None:
    index = declined_fraud_sample(shipped_server, MOBILE)
    connect(browser, shipped_server, TEST_API_KEY)
    wait = WebDriverWait(browser, WAIT_S)
    wait.until(lambda d: d.find_element(By.ID, "model-pick").is_enabled())
    picker = Select(browser.find_element(By.ID, "model-pick"))
    assert [o.text for o in picker.options] == ["creditcard", "mobile-money"]
    assert picker.first_selected_option.text == "creditcard"
    picker.select_by_value("mobile-money")
    wait.until(ready.text_to_be_present_in_element((By.ID, "model"), "mobile-money version 4"))
    names = [
        i.get_attribute("name") for i in browser.find_elements(By.CSS_SELECTOR, "#features input")
    ]
    assert names == json.loads((MOBILE / "samples.json").read_text())["feature_names"]
    Select(browser.find_element(By.ID, "sample")).select_by_value(str(index))
    browser.find_element(By.ID, "score").click()
    wait.until(ready.text_to_be_present_in_element((By.ID, "decision"), "DECLINE"))
    assert browser.find_element(By.ID, "version").text == "4"
    assert browser.find_element(By.ID, "error").is_displayed() is False


def test_a_wrong_key_is_shown_plainly(
    shipped_server: LiveServer, browser: webdriver.Chrome
) -> None:
    connect(browser, shipped_server, "not-the-key")
    error = browser.find_element(By.ID, "error")
    WebDriverWait(browser, WAIT_S).until(lambda d: error.is_displayed())
    assert "403" in error.text and "not valid" in error.text
    assert not browser.find_element(By.ID, "score").is_enabled()


def test_the_page_is_static_and_needs_no_key(shipped_server: LiveServer) -> None:
    page = httpx.get(f"{shipped_server.base_url}/ui/", timeout=10)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert httpx.get(f"{shipped_server.base_url}/ui/app.js", timeout=10).status_code == 200


def test_the_comparison_of_champion_and_shadow_is_shown(
    tmp_path: Path, browser: webdriver.Chrome
) -> None:
    """A policy with a shadow: the page shows the champion, the shadow's figures on the same
    requests and the decisions' confusion, refreshed as traffic comes."""
    root = tmp_path / "repo" / "creditcard"
    root.mkdir(parents=True)
    for version in ("3", "4"):
        make_version(SHIPPED, root, version)
    (root / "policy.json").write_text(json.dumps({"champion": "3", "shadow": "4"}))
    server = start_server(root / "3", tmp_path / "uvicorn.log")
    try:
        rows = json.loads((SHIPPED / "samples.json").read_text())["rows"]
        with server.client(headers={"X-API-Key": TEST_API_KEY}) as client:
            for row in rows:
                assert (
                    client.post("/v1/score", json={"features": row["features"]}).status_code == 200
                )
        connect(browser, server, TEST_API_KEY)
        wait = WebDriverWait(browser, WAIT_S)
        wait.until(lambda d: d.find_element(By.ID, "comparison").is_displayed())
        assert browser.find_element(By.ID, "policy").text.startswith("champion version 3")
        [challenger] = browser.find_elements(By.CSS_SELECTOR, "#challengers .challenger")
        assert challenger.text.startswith(
            f"shadow version 4: {len(rows)} compared, agreement 100.00 %"
        )
        agreeing = challenger.find_elements(By.CSS_SELECTOR, "td.agree")
        assert sum(int(c.text) for c in agreeing) == len(rows)
        ARTIFACTS.mkdir(exist_ok=True)
        assert browser.save_screenshot(str(ARTIFACTS / "ui-comparison.png"))
    finally:
        stop_server(server)
