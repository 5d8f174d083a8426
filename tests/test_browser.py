"""The pages people look at, as a person sees them: Debian's headless Chromium through Selenium.

``/docs`` (Swagger UI, its assets served by the API itself) and Flower, each in a
fresh browser; a screenshot of every page checked is saved under the test's tmp_path.
"""

import base64
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from tests.api_server import api_server
from tests.browser_setup import ChromiumUnavailable, ensure_chromium
from tests.support import (
    metric_value,
    running_flower,
    submit_embed,
    wait_for,
    wait_for_job,
)

FLOWER_CREDENTIALS = ("ops", "browser-s3cret")
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
WAIT = 30  # seconds for a page to show what it should, on 2 busy cores


@pytest.fixture(scope="module")
def chromium() -> tuple[Path, Path]:
    try:
        return ensure_chromium()
    except ChromiumUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def browser(chromium: tuple[Path, Path], tmp_path: Path) -> Iterator[WebDriver]:
    chromium_path, driver_path = chromium
    options = webdriver.ChromeOptions()
    # The packaged binaries, named: Selenium Manager is never asked to find or fetch one.
    options.binary_location = str(chromium_path)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in CI containers
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1000",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(argument)
    service = Service(str(driver_path), log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver: WebDriver, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    assert driver.save_screenshot(str(path)), f"no screenshot for {name}"
    assert path.stat().st_size > 0
    return path


def navigation_status(driver: WebDriver) -> int:
    """The HTTP status of the page the browser shows (Navigation Timing's responseStatus)."""
    return driver.execute_script(
        "return performance.getEntriesByType('navigation')[0].responseStatus"
    )


def foreign_resources(driver: WebDriver, origin: str) -> list[str]:
    """Everything the page loaded from anywhere but ``origin``."""
    names = driver.execute_script(
        "return performance.getEntriesByType('resource').map(entry => entry.name)"
    )
    return [name for name in names if not name.startswith((origin, "data:", "blob:"))]


def table_rows(driver: WebDriver, table: str) -> list[tuple[str, list[str]]]:
    """A table's body rows: each row's id and its cells' text as the DOM holds it."""
    rows = driver.execute_script(
        "return [...document.querySelectorAll(arguments[0] + ' tbody tr')].map(row =>"
        " [row.id, [...row.querySelectorAll('td')].map(td => td.textContent.trim())])",
        table,
    )
    return [(row_id, cells) for row_id, cells in rows]


def test_setup_without_the_packages_or_apt_fails_with_how_to_install(monkeypatch, tmp_path):
    # A machine with neither the browser nor apt-get: the fixture fails, saying what to run.
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ChromiumUnavailable, match="apt-get install -y --no-install-recommends"):
        ensure_chromium()


# --- /docs ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api(settings, tmp_path_factory) -> Iterator[str]:
    with api_server(settings, tmp_path_factory.mktemp("browser-api")) as server:
        yield server.base_url


def test_docs_lists_every_operation_and_submits_a_job(browser, api, make_tenant, tmp_path):
    spec = requests.get(f"{api}/openapi.json", timeout=10).json()
    expected = sorted(
        (method.upper(), path)
        for path, item in spec["paths"].items()
        for method in item
        if method in HTTP_METHODS
    )
    wait = WebDriverWait(browser, WAIT)

    browser.get(f"{api}/docs")
    assert navigation_status(browser) == 200
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) >= len(expected))
    shown = browser.execute_script(
        """return [...document.querySelectorAll('.opblock')].map(block => [
               block.querySelector('.opblock-summary-method').textContent.trim(),
               block.querySelector('.opblock-summary-path').dataset.path])"""
    )
    screenshot(browser, tmp_path, "docs")
    # Every operation once, as /openapi.json lists them (an operation under two tags would
    # show twice: ours have one tag each).
    assert sorted(map(tuple, shown)) == expected
    # Swagger UI's scripts, styles and icons are the API's own: nothing comes from a CDN.
    assert foreign_resources(browser, api) == []
    assert browser.execute_script("return typeof SwaggerUIBundle") == "function"

    key = make_tenant()["Authorization"].removeprefix("Bearer ")
    browser.find_element(By.CSS_SELECTOR, ".auth-wrapper button.authorize").click()
    modal = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, ".modal-ux")))
    modal.find_element(By.CSS_SELECTOR, "input").send_keys(key)
    modal.find_element(By.CSS_SELECTOR, "button.authorize[type=submit]").click()
    wait.until(lambda d: modal.find_elements(By.XPATH, ".//button[normalize-space()='Logout']"))
    screenshot(browser, tmp_path, "docs-authorized")
    modal.find_element(By.CSS_SELECTOR, "button.btn-done").click()
    wait.until(ec.invisibility_of_element_located((By.CSS_SELECTOR, ".modal-ux")))

    operation = browser.find_element(
        By.XPATH,
        "//div[contains(@class,'opblock-post')]"
        "[.//*[contains(@class,'opblock-summary-path') and @data-path='/v1/jobs/embed']]",
    )
    operation.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
    try_it = wait.until(lambda d: operation.find_element(By.CSS_SELECTOR, "button.try-out__btn"))
    try_it.click()
    body = wait.until(
        lambda d: operation.find_element(By.CSS_SELECTOR, "textarea.body-param__text")
    )
    body.send_keys(Keys.CONTROL, "a")
    body.send_keys(Keys.DELETE)
    body.send_keys(json.dumps({"texts": ["typed into Swagger UI", "in a real browser"]}))
    operation.find_element(By.CSS_SELECTOR, "button.execute").click()

    status = wait.until(
        lambda d: operation.find_element(
            By.CSS_SELECTOR, ".live-responses-table .response .response-col_status"
        )
    )
    response_body = operation.find_element(
        By.CSS_SELECTOR, ".live-responses-table .response-col_description pre"
    )
    browser.execute_script("arguments[0].scrollIntoView()", status)
    screenshot(browser, tmp_path, "docs-executed")
    assert status.text.strip() == "202", response_body.text
    job = json.loads(response_body.text)
    assert job["status"] in {"queued", "running", "succeeded"}
    # The id as the page shows it, and the job it names is the tenant's, made from the form.
    assert re.search(rf"\b{re.escape(job['id'])}\b", operation.text)
    stored = requests.get(
        f"{api}/v1/jobs/{job['id']}", headers={"Authorization": f"Bearer {key}"}, timeout=10
    )
    assert stored.status_code == 200
    assert stored.json()["type"] == "embed"
    assert stored.json()["progress"]["total"] == 2


# --- Flower --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def flower(worker_env, tmp_path_factory) -> Iterator[str]:
    """Flower as ``make run`` starts it: basic auth on every page (see tests/test_flower.py)."""
    log_path = tmp_path_factory.mktemp("browser-flower") / "flower.log"
    with running_flower(worker_env, FLOWER_CREDENTIALS, log_path) as url:
        yield url


def test_flower_needs_credentials_then_shows_workers_and_tasks(
    browser, flower, client, headers, gpu_worker, cpu_worker, tmp_path
):
    browser.get(f"{flower}/workers")
    assert navigation_status(browser) == 401
    assert "Workers" not in browser.title
    screenshot(browser, tmp_path, "flower-401")

    # Events are broadcast: Flower sees only what is sent after it subscribed, and marks a
    # worker online once it receives the worker's heartbeat.
    def online(worker) -> bool:
        metrics = requests.get(f"{flower}/metrics", timeout=10).text
        return metric_value(metrics, "flower_worker_online", worker=worker.hostname) == 1

    for worker in (gpu_worker, cpu_worker):
        wait_for(lambda w=worker: online(w), 30, f"Flower to see {worker.hostname}", interval=0.3)
    # Submitted together, the one-text jobs share the gpu worker's batches; the stored one
    # also runs a cpu task (indexing its vector).
    jobs = [submit_embed(client, headers, [f"flower sees job {i}"]) for i in range(3)]
    jobs.append(submit_embed(client, headers, ["stored, then indexed"], store=True))
    assert all(wait_for_job(client, headers, job["id"])["status"] == "succeeded" for job in jobs)

    # The credentials go with every request of the page, its XHRs included.
    token = base64.b64encode(":".join(FLOWER_CREDENTIALS).encode()).decode()
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd(
        "Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}}
    )
    wait = WebDriverWait(browser, WAIT)

    browser.get(f"{flower}/workers")
    assert navigation_status(browser) == 200
    rows = wait.until(lambda d: table_rows(d, "#workers-table"))
    screenshot(browser, tmp_path, "flower-workers")
    status = {cells[0]: cells[1] for _, cells in rows}
    for worker in (gpu_worker, cpu_worker):
        assert status.get(worker.hostname) == "Online", status

    # A job's task id is its job id; indexing the stored job's vector is a task of its own.
    job_ids = {job["id"] for job in jobs}

    def tasks_page() -> dict[str, dict[str, str]]:
        browser.get(f"{flower}/tasks")
        assert navigation_status(browser) == 200
        columns = [
            th.get_attribute("data-column")
            for th in browser.find_elements(By.CSS_SELECTOR, "#tasks-table thead th")
        ]
        # The rows come by XHR after the page loads; "no tasks yet" is one cell without a name.
        # (The uuid cell holds the id twice, in full and short: the row's id is the task's.)
        rows = wait.until(lambda d: [r for r in table_rows(d, "#tasks-table") if len(r[1]) > 1])
        return {uuid: dict(zip(columns, cells, strict=True)) for uuid, cells in rows}

    def all_succeeded() -> dict[str, dict[str, str]] | None:
        tasks = tasks_page()
        ours = {uuid: task for uuid, task in tasks.items() if uuid in job_ids}
        ours |= {u: t for u, t in tasks.items() if t["name"] == "tasks.memory.index_embed_jobs"}
        done = ours.keys() >= job_ids and len(ours) > len(job_ids)
        return ours if done and all(t["state"] == "SUCCESS" for t in ours.values()) else None

    # Flower hears of a task's end by event, a moment after the job is stored as succeeded.
    ours = wait_for(all_succeeded, WAIT, "the Tasks page to show the jobs' tasks", interval=0.5)
    screenshot(browser, tmp_path, "flower-tasks")
    assert {task["name"] for uuid, task in ours.items() if uuid in job_ids} == {"tasks.embed.embed"}
    # Each with the time it was received, as the page formats it (a date and a time of day).
    for task in ours.values():
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(\.\d+)?", task["received"]), task
    assert foreign_resources(browser, flower) == []
