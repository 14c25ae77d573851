"""`dartflow ui` without servers: ports, URLs and the two command lines (flows/ui.py)."""

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from dartflow.config import validate_config
from dartflow.flows import ui


def config_in(work_dir: Path, **tracking):
    return validate_config({"work_dir": str(work_dir), "tracking": tracking})


def test_port_zero_picks_a_free_port_and_a_taken_port_is_refused_naming_the_flag():
    port = ui.resolve_port("127.0.0.1", 0, "MLflow UI", "--mlflow-port")
    assert 0 < port < 65536
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"port {busy} on 127.0.0.1 .*--mlflow-port"):
            ui.resolve_port("127.0.0.1", busy, "MLflow UI", "--mlflow-port")


def test_the_two_uis_never_share_a_port(tmp_path):
    with pytest.raises(ValueError, match="cannot share port"):
        ui.resolve_port("127.0.0.1", 4300, "MLflow UI", "--mlflow-port", taken=(4300,))
    servers = ui.ui_servers(config_in(tmp_path), host="127.0.0.1", prefect_port=0, mlflow_port=0, log_dir=tmp_path, environ={})
    assert len({server.url for server in servers}) == 2


def test_wildcard_hosts_are_opened_on_loopback_and_ipv6_is_bracketed():
    assert ui.url_for("127.0.0.1", 4200) == "http://127.0.0.1:4200"
    assert ui.url_for("0.0.0.0", 4200) == "http://127.0.0.1:4200"
    assert ui.url_for("::1", 5000) == "http://[::1]:5000"


def test_prefect_server_reads_the_home_the_train_flow_wrote(tmp_path):
    config = config_in(tmp_path / "work")
    assert ui.prefect_home(config, {}) == (tmp_path / "work" / "prefect").resolve()
    assert ui.prefect_home(config, {"PREFECT_HOME": str(tmp_path / "elsewhere")}) == (tmp_path / "elsewhere").resolve()

    (prefect, mlflow) = ui.ui_servers(
        config, host="127.0.0.1", prefect_port=4321, mlflow_port=5432, log_dir=tmp_path / "logs", environ={"KEEP": "1"}
    )
    assert prefect.argv == [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", "4321",
                            "--no-services"]
    assert prefect.env["PREFECT_HOME"] == str((tmp_path / "work" / "prefect").resolve())
    assert prefect.env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert prefect.env["PREFECT_UI_API_URL"] == "http://127.0.0.1:4321/api"
    assert prefect.env["KEEP"] == "1"
    assert prefect.url == "http://127.0.0.1:4321" and prefect.log_path == tmp_path / "logs" / "prefect-server.log"


def test_a_client_api_url_is_not_passed_to_the_server_and_a_ui_api_url_set_by_hand_is_kept(tmp_path):
    env = ui.prefect_server_env(tmp_path, "0.0.0.0", 4200, {"PREFECT_API_URL": "http://x/api"})
    assert "PREFECT_API_URL" not in env and env["PREFECT_UI_API_URL"] == "http://127.0.0.1:4200/api"
    env = ui.prefect_server_env(tmp_path, "0.0.0.0", 4200, {"PREFECT_UI_API_URL": "http://box:4200/api"})
    assert env["PREFECT_UI_API_URL"] == "http://box:4200/api"


def test_mlflow_server_uses_the_runs_store_and_artifact_root(tmp_path):
    config = config_in(tmp_path / "work")
    argv = ui.mlflow_server_command(config.mlflow_uri, "127.0.0.1", 5001)
    db = (tmp_path / "work" / "mlflow" / "mlflow.db").resolve()
    assert argv[:4] == [sys.executable, "-m", "mlflow", "server"]
    assert argv[argv.index("--backend-store-uri") + 1] == f"sqlite:///{db}"
    assert argv[argv.index("--default-artifact-root") + 1] == (db.parent / "artifacts").as_uri()
    assert argv[argv.index("--port") + 1] == "5001" and argv[argv.index("--workers") + 1] == "1"
    assert ui.mlflow_server_env({})["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"


def test_uis_served_elsewhere_are_not_started(tmp_path):
    config = config_in(tmp_path, mlflow_uri="http://tracking:5000/")
    environ = {"PREFECT_API_URL": "http://orchestrator:4200/api"}
    assert ui.remote_urls(config, environ) == {"Prefect": "http://orchestrator:4200", "MLflow": "http://tracking:5000"}
    assert ui.ui_servers(config, host="127.0.0.1", prefect_port=0, mlflow_port=0, log_dir=tmp_path, environ=environ) == []


def test_servers_start_through_a_launcher_that_execs_the_command_line():
    argv = [sys.executable, "-c", "import sys; print(sys.argv[1:])", "--flag"]
    launched = ui.launch_argv(argv)
    assert launched[-len(argv):] == argv
    assert subprocess.run(launched, capture_output=True, text=True, check=True).stdout == "['--flag']\n"


def python_server(tmp_path, code: str) -> ui.Server:
    return ui.Server("Prefect", [sys.executable, "-c", code], {}, "http://127.0.0.1:9", "/health", tmp_path / "server.log")


def test_a_server_that_exits_while_starting_is_named_with_its_log_tail(tmp_path):
    server = python_server(tmp_path, "import sys; print('no database here', flush=True); sys.exit(3)")
    ui.start(server)
    try:
        with pytest.raises(ui.UIStartError, match=r"(?s)Prefect UI server exited with code 3.*no database here"):
            ui.wait_until_up([server], timeout_s=30, poll_s=0.05)
    finally:
        ui.stop(server)


def test_stop_kills_the_whole_group_after_the_grace_period(tmp_path):
    # A leader that ignores SIGTERM, with a child in its group: both are gone after stop().
    code = (
        "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        "print(child.pid, flush=True); time.sleep(60)"
    )
    server = python_server(tmp_path, code)
    ui.start(server)
    deadline = time.monotonic() + 30
    while not server.log_path.read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.05)
    child = psutil.Process(int(server.log_path.read_text()))
    started = time.monotonic()
    ui.stop(server, grace_s=0.5)
    assert server.process.returncode == -signal.SIGKILL and time.monotonic() - started < 10
    psutil.wait_procs([child], timeout=5)
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
