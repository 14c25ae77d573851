"""The two UIs in a real browser: after a small real train run, `serve_uis` (flows/ui.py) starts the
Prefect and MLflow servers on its work dir and headless Chromium checks what a person would see.

Playwright drives the system Chromium (no browser download is possible here; CI installs the Debian
package). Screenshots go to $DARTFLOW_TEST_ARTIFACTS/ui-browser, else to <tmp_path>/test-artifacts.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
import yaml

CHROMIUM = Path("/usr/bin/chromium")
DARTFLOW = Path(sys.executable).parent / "dartflow"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
UI_TIMEOUT_MS = 60_000  # a JS app on two busy cores

BC_STEPS, RL_STEPS = 2, 2
TINY_RUN = {
    "run_name": "ui",
    "environments": [{"name": "guess_number", "params": {"low": 1, "high": 8}}],
    "cluster": {"num_workers": 1, "slots_per_worker": 8},
    "rollout": {
        "group_size": 4, "max_turns": 4, "max_new_tokens": 8, "max_staleness": 1, "concurrent_episodes": 8,
        "engine": {"max_model_len": 1024},
    },
    "training": {"steps": RL_STEPS, "batch_size": 8, "micro_batch_size": 8, "bc_steps": BC_STEPS,
                 "bc_demonstrations": 16, "bc_max_turns": 2},
    "evaluation": {"every_versions": 0, "heldout_problems": 2},
    "tracking": {"model_name": "ui-policy"},
}


def browser_or_fail():
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests drive the system Chromium "
            "(install it with `apt-get install -y chromium chromium-driver`)"
        )
    from playwright.sync_api import sync_playwright

    return sync_playwright()


def artifacts_dir(tmp_path: Path) -> Path:
    root = os.environ.get("DARTFLOW_TEST_ARTIFACTS")
    folder = Path(root) / "ui-browser" if root else tmp_path / "test-artifacts"
    folder.mkdir(parents=True, exist_ok=True)
    print(f"screenshots: {folder}")
    return folder


def screenshot(page, folder: Path, name: str) -> Path:
    path = folder / name
    page.screenshot(path=str(path), full_page=True)
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000, f"{path} is not a non-empty PNG"
    return path


def new_page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    # MLflow opens its assistant panel on a first visit; screenshots show the page without it.
    context.add_init_script(
        "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
        "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
    )
    return context.new_page()


def train_tiny_run(tmp_path: Path, monkeypatch) -> Path:
    """`dartflow train` on TINY_RUN, recording Prefect runs under <work_dir>/prefect as it does by default."""
    for name in ("PREFECT_HOME", "PREFECT_API_URL"):  # here and in the run: `dartflow ui` reads the same home
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "ui.yaml"
    config.write_text(yaml.safe_dump({**TINY_RUN, "work_dir": str(tmp_path / "work")}))
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    result = subprocess.run([str(DARTFLOW), "train", str(config)], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return config


def server_processes(before: set[int]) -> list[psutil.Process]:
    """This process's descendants that were not there before (the UI servers and their workers)."""
    return [p for p in psutil.Process().children(recursive=True) if p.pid not in before]


def assert_gone(processes: list[psutil.Process], urls: list[str]) -> None:
    _, alive = psutil.wait_procs(processes, timeout=5)
    assert not alive, f"server processes left running: {[(p.pid, p.cmdline()[:6]) for p in alive]}"
    for url in urls:
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(url, timeout=5)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_prefect_and_mlflow_uis_show_a_real_run_in_a_browser(tmp_path, monkeypatch):
    from mlflow import MlflowClient
    from playwright.sync_api import expect

    from dartflow.config import load_config
    from dartflow.flows.ui import serve_uis

    playwright = browser_or_fail()
    shots = artifacts_dir(tmp_path)
    config = load_config(train_tiny_run(tmp_path, monkeypatch))
    client = MlflowClient(config.mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name(config.tracking.experiment).experiment_id])
    run_id, flow_run_id = run.info.run_id, run.data.tags["prefect.flow_run_id"]
    train_runs = [f"train v{BC_STEPS + step}" for step in range(RL_STEPS)]

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with serve_uis(config, prefect_port=0, mlflow_port=0, log_dir=tmp_path / "ui-logs") as urls:
        servers = server_processes(before)
        assert servers, "no server process was started"
        with playwright as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
            page = new_page(browser)

            # (a) Prefect: the flow run's training task runs, and its artifact linking the MLflow run.
            page.goto(f"{urls.prefect}/runs/flow-run/{flow_run_id}")
            page.locator("li.p-tab", has_text="Task Runs").click(timeout=UI_TIMEOUT_MS)
            for name in train_runs:
                expect(page.get_by_text(name, exact=True)).to_be_visible(timeout=UI_TIMEOUT_MS)
            screenshot(page, shots, "prefect-flow-run-task-runs.png")
            page.locator("li.p-tab", has_text="Artifacts").click()
            card = page.get_by_text("mlflow-run", exact=True)
            expect(card).to_be_visible(timeout=UI_TIMEOUT_MS)
            screenshot(page, shots, "prefect-flow-run-artifacts.png")
            card.click()
            link = page.locator(f"a[href*='/runs/{run_id}']")
            expect(link).to_be_visible(timeout=UI_TIMEOUT_MS)
            screenshot(page, shots, "prefect-mlflow-link-artifact.png")
            href = link.get_attribute("href")
            assert href.endswith(f"/#/experiments/{run.info.experiment_id}/runs/{run_id}"), href

            # (b) MLflow: the linked run page (on this server's port) with its metrics; the model's alias.
            page.goto(urls.mlflow + href[href.index("/#/"):])
            expect(page.get_by_text("train/reward_mean", exact=True).first).to_be_visible(timeout=UI_TIMEOUT_MS)
            expect(page.get_by_text("eval/heldout_success", exact=True).first).to_be_visible()
            screenshot(page, shots, "mlflow-run.png")
            page.goto(f"{urls.mlflow}/#/models/{config.tracking.model_name}")
            expect(page.get_by_text("Version 1").first).to_be_visible(timeout=UI_TIMEOUT_MS)
            expect(page.get_by_text("candidate").first).to_be_visible()  # the alias, beside its version
            screenshot(page, shots, "mlflow-registered-model.png")
            browser.close()
    assert_gone(servers, [f"{urls.prefect}/api/health", f"{urls.mlflow}/health"])
    left = [p for p in server_processes(before) if p.status() != psutil.STATUS_ZOMBIE]
    assert not left, f"child processes left after the test: {[(p.pid, p.cmdline()[:6]) for p in left]}"
    assert len(list(shots.glob("*.png"))) >= 5


RUN_UI = textwrap.dedent(
    """
    import sys
    from dartflow.config import load_config
    from dartflow.flows.ui import run_ui
    sys.exit(run_ui(load_config(sys.argv[1]), prefect_port=0, mlflow_port=0))
    """
)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_run_ui_prints_both_urls_and_stops_both_servers_on_sigterm(tmp_path, monkeypatch):
    for name in ("PREFECT_HOME", "PREFECT_API_URL"):
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "empty.yaml"
    config.write_text(yaml.safe_dump({"work_dir": str(tmp_path / "work")}))  # no runs yet: both UIs still serve
    process = subprocess.Popen(
        [sys.executable, "-c", RUN_UI, str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    lines = []
    deadline = time.monotonic() + 240
    while not any(line.startswith("MLflow UI:") for line in lines) and time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
    urls = {line.split(":", 1)[0]: line.split(":", 1)[1].split()[0] for line in lines if " UI:" in line}
    if set(urls) != {"Prefect UI", "MLflow UI"}:
        process.kill()
        pytest.fail("run_ui printed no URLs:\n" + "".join(lines) + process.stderr.read()[-3000:])
    servers = psutil.Process(process.pid).children(recursive=True)
    assert len(servers) >= 2
    health = [urls["Prefect UI"].removesuffix("/runs") + "/api/health", urls["MLflow UI"] + "/health"]
    for url in health:
        assert url.startswith("http://127.0.0.1:")
        assert urllib.request.urlopen(url, timeout=10).status == 200

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0, process.stderr.read()[-3000:]
    assert "stopped" in process.stderr.read()
    assert_gone(servers, health)
