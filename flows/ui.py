"""`dartflow ui`: the Prefect UI and the MLflow UI over a work dir's runs, on localhost, until Ctrl-C.

    with serve_uis(config, prefect_port=0, mlflow_port=0) as urls:   # 0: a free port
        print(urls.prefect, urls.mlflow)                               # both answer HTTP here

Prefect: `prefect server start` with the Prefect home the train flow used ($PREFECT_HOME, else
<work_dir>/prefect, as `configure_prefect` in flows/train.py picks it). The local ephemeral runs
write Prefect's default database, `<PREFECT_HOME>/prefect.db`, so this server opens the same one.
It runs as a webserver only (`--no-services`): a viewer does not need the scheduler or event
services, and `dartflow serve` runs its own server, with them, on the same database.
MLflow: `mlflow server` on the config's tracking URI with the artifact root the runs used
(storage/tracking.py `artifact_location_for`); job execution off, one worker.

Each server runs in a process group of its own (Ctrl-C in the terminal reaches only this process)
that gets SIGTERM if this process dies; stopping terminates both groups, then kills what is left.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dartflow.config import RunConfig

DEFAULT_HOST = "127.0.0.1"
START_TIMEOUT_S = 180.0  # Prefect's first start copies its UI build and migrates the database
STOP_GRACE_S = 10.0
LOG_TAIL_CHARS = 3000
_WILDCARD_HOSTS = ("0.0.0.0", "::", "")


class UIStartError(RuntimeError):
    """A server did not answer HTTP in time or exited while starting."""


@dataclass(frozen=True)
class UIUrls:
    prefect: str
    mlflow: str


@dataclass
class Server:
    """One UI server: the command it runs and how to tell it is up."""

    name: str  # "Prefect" or "MLflow", as messages say it
    argv: list[str]
    env: dict[str, str]
    url: str
    health_path: str
    log_path: Path
    process: subprocess.Popen | None = None


# ---- pure parts: paths, ports, URLs, command lines ---------------------------------------------


def prefect_home(config: RunConfig, environ: dict[str, str] | None = None) -> Path:
    """The PREFECT_HOME the train flow used for this config (flows/train.py configure_prefect)."""
    environ = os.environ if environ is None else environ
    home = environ.get("PREFECT_HOME")
    return Path(home).expanduser().resolve() if home else (config.work_dir / "prefect").resolve()


def url_for(host: str, port: int) -> str:
    """The URL a local browser opens: a wildcard bind is reached on 127.0.0.1."""
    shown = "127.0.0.1" if host in _WILDCARD_HOSTS else host
    return f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"


def free_port(host: str = DEFAULT_HOST) -> int:
    """A port the OS says is free on `host` now (another process may still take it before we bind)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def resolve_port(host: str, port: int, what: str, flag: str, taken: tuple[int, ...] = ()) -> int:
    """`port`, or a free one (none of `taken`) when it is 0; a clear error when it is not free."""
    if port == 0:
        while (port := free_port(host)) in taken:
            pass
        return port
    if port in taken:
        raise ValueError(f"the Prefect and MLflow UIs cannot share port {port}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise OSError(
                f"port {port} on {host} is not free for the {what} ({exc.strerror}): pass {flag} with another "
                "port, or 0 for a free one"
            ) from None
    return port


def prefect_server_command(host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port), "--no-services"]


def prefect_server_env(home: Path, host: str, port: int, base: dict[str, str]) -> dict[str, str]:
    """The server's environment: the run's Prefect home; the UI talks to this server's API."""
    env = {key: value for key, value in base.items() if key != "PREFECT_API_URL"}  # that is a client setting
    env.update({
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_API_HOST": host,
        "PREFECT_SERVER_API_PORT": str(port),
    })
    env.setdefault("PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT", "false")  # upgrade prompts; offline here
    # Set by hand when the UI is opened from another machine (a wildcard host is shown as 127.0.0.1).
    env.setdefault("PREFECT_UI_API_URL", f"{url_for(host, port)}/api")
    return env


def mlflow_server_command(tracking_uri: str, host: str, port: int) -> list[str]:
    """`mlflow server` on the runs' store; new experiments get the artifact root the runs used."""
    from dartflow.storage.tracking import artifact_location_for

    argv = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking_uri,
            "--host", host, "--port", str(port), "--workers", "1"]
    artifacts = artifact_location_for(tracking_uri)
    if artifacts is not None:
        # Runs keep file:// artifact URIs, which the server reads directly: nothing to proxy.
        argv += ["--default-artifact-root", artifacts, "--no-serve-artifacts"]
    return argv


def mlflow_server_env(base: dict[str, str]) -> dict[str, str]:
    return {**base, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}


def remote_urls(config: RunConfig, environ: dict[str, str]) -> dict[str, str]:
    """UIs already served elsewhere, which `dartflow ui` does not start: a Prefect API in PREFECT_API_URL
    (the train flow then records there, not in a local home), an http(s) MLflow tracking URI."""
    remote = {}
    api_url = environ.get("PREFECT_API_URL", "").rstrip("/")
    if api_url:
        remote["Prefect"] = api_url[: -len("/api")] if api_url.endswith("/api") else api_url
    if config.mlflow_uri.startswith(("http://", "https://")):
        remote["MLflow"] = config.mlflow_uri.rstrip("/")
    return remote


def ui_servers(
    config: RunConfig, *, host: str, prefect_port: int, mlflow_port: int, log_dir: Path,
    environ: dict[str, str] | None = None,
) -> list[Server]:
    """The servers to start (ports resolved; nothing started yet): the UIs not already served elsewhere."""
    environ = dict(os.environ if environ is None else environ)
    remote = remote_urls(config, environ)
    servers = []
    if "Prefect" not in remote:
        port = resolve_port(host, prefect_port, "Prefect UI", "--prefect-port")
        env = prefect_server_env(prefect_home(config, environ), host, port, environ)
        servers.append(Server(
            "Prefect", prefect_server_command(host, port), env, url_for(host, port), "/api/health",
            log_dir / "prefect-server.log",
        ))
    if "MLflow" not in remote:
        taken = (int(servers[0].env["PREFECT_SERVER_API_PORT"]),) if servers else ()
        port = resolve_port(host, mlflow_port, "MLflow UI", "--mlflow-port", taken)
        servers.append(Server(
            "MLflow", mlflow_server_command(config.mlflow_uri, host, port), mlflow_server_env(environ),
            url_for(host, port), "/health", log_dir / "mlflow-server.log",
        ))
    return servers


# ---- processes -------------------------------------------------------------------------------


# Runs first in each server's process: asks (prctl PR_SET_PDEATHSIG = 1) for SIGTERM when the parent
# (the thread that started it) dies, then execs the server, which keeps that request. A launcher, not a
# preexec_fn: that would run Python's at-fork hooks (lancedb warns about them) in a process about to exec.
_LAUNCHER = (
    "import ctypes, os, signal, sys; ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0); "
    "os.getppid() == int(sys.argv[1]) or os._exit(1); os.execv(sys.argv[2], sys.argv[2:])"
)


def launch_argv(argv: list[str]) -> list[str]:
    """`argv`, through the death-signal launcher where the platform has one (Linux, main thread)."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return argv  # a death signal follows the thread that started the child: not a short-lived one
    return [sys.executable, "-c", _LAUNCHER, str(os.getpid()), *argv]


def start(server: Server) -> None:
    server.log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(server.log_path, "wb") as log:
        server.process = subprocess.Popen(
            launch_argv(server.argv), env=server.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(server: Server, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM to the server's process group, SIGKILL to what is left after `grace_s`, then reap the leader."""
    process = server.process
    if process is None or process.returncode is not None:
        return  # not started, or reaped already (its group id may belong to another process now)
    _signal_group(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    # Not reaped yet: the leader's pid, hence the group's id, cannot go to another process meanwhile.
    while exit_status(process) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    _signal_group(process.pid, signal.SIGKILL)  # workers that outlive their leader too
    process.wait()


def exit_status(process: subprocess.Popen) -> int | None:
    """The exit code (-signal when killed) if the server has exited, else None; unlike `poll()` it leaves
    the process unreaped, so that `stop` can still signal its group under the same id."""
    if process.returncode is not None:
        return process.returncode
    info = os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    if info is None:
        return None
    return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass


def log_tail(server: Server, chars: int = LOG_TAIL_CHARS) -> str:
    try:
        text = server.log_path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return text[-chars:]


def answers(url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_until_up(servers: list[Server], timeout_s: float = START_TIMEOUT_S, poll_s: float = 0.5) -> None:
    """Until every server answers its health URL; UIStartError naming the first that exits or is late."""
    deadline = time.monotonic() + timeout_s
    waiting = list(servers)
    while waiting:
        for server in list(waiting):
            if answers(server.url + server.health_path):
                waiting.remove(server)
            elif (code := exit_status(server.process)) is not None:
                raise UIStartError(_failure(server, f"exited with code {code} while starting"))
        if waiting and time.monotonic() > deadline:
            raise UIStartError(_failure(waiting[0], f"did not answer at {waiting[0].url} within {timeout_s:.0f} s"))
        if waiting:
            time.sleep(poll_s)


def _failure(server: Server, what: str) -> str:
    return f"the {server.name} UI server {what}; log {server.log_path}:\n{log_tail(server)}"


# ---- entry points ----------------------------------------------------------------------------


@contextmanager
def serving(
    config: RunConfig, *, host: str = DEFAULT_HOST, prefect_port: int = 4200, mlflow_port: int = 5000,
    log_dir: Path | None = None, timeout_s: float = START_TIMEOUT_S, environ: dict[str, str] | None = None,
) -> Iterator[tuple[UIUrls, list[Server]]]:
    """The UIs' URLs and the servers started for them (up), for the body of the `with`; then stopped."""
    environ = dict(os.environ if environ is None else environ)
    log_dir = log_dir if log_dir is not None else config.work_dir / "ui"
    servers = ui_servers(
        config, host=host, prefect_port=prefect_port, mlflow_port=mlflow_port, log_dir=log_dir, environ=environ
    )
    urls = {**remote_urls(config, environ), **{server.name: server.url for server in servers}}
    try:
        for server in servers:
            start(server)
        wait_until_up(servers, timeout_s)
        yield UIUrls(prefect=urls["Prefect"], mlflow=urls["MLflow"]), servers
    finally:
        stop_all(servers)


@contextmanager
def serve_uis(
    config: RunConfig, *, host: str = DEFAULT_HOST, prefect_port: int = 4200, mlflow_port: int = 5000,
    log_dir: Path | None = None, timeout_s: float = START_TIMEOUT_S,
) -> Iterator[UIUrls]:
    """Both UIs answering HTTP for the body of the `with`, both stopped (process groups included) after it.
    Port 0 picks a free port; logs go to `log_dir` (default <work_dir>/ui)."""
    with serving(config, host=host, prefect_port=prefect_port, mlflow_port=mlflow_port, log_dir=log_dir,
                 timeout_s=timeout_s) as (urls, _):
        yield urls


def stop_all(servers: list[Server]) -> None:
    """Stop the servers, latest first; a Ctrl-C or SIGTERM meanwhile waits until they are stopped."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        for server in reversed(servers):
            stop(server)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


class _Stop(Exception):
    pass


def _raise_stop(signum, _frame) -> None:
    raise _Stop(signal.Signals(signum).name)


def run_ui(
    config: RunConfig, *, host: str = DEFAULT_HOST, prefect_port: int = 4200, mlflow_port: int = 5000,
    open_seconds: float | None = None,
) -> int:
    """Entry point of `dartflow ui`: serve both UIs until Ctrl-C or SIGTERM (or for `open_seconds`).
    0 after a stop, 1 when a server does not come up or exits on its own."""
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    try:
        with serving(config, host=host, prefect_port=prefect_port, mlflow_port=mlflow_port) as (urls, servers):
            print(f"Prefect UI: {urls.prefect}/runs", flush=True)
            print(f"MLflow UI:  {urls.mlflow}", flush=True)
            started = {server.name for server in servers}
            for name in sorted({"Prefect", "MLflow"} - started):
                print(f"({name}: served elsewhere, not started here)", flush=True)
            if "Prefect" in started:
                print(f"(Prefect home {prefect_home(config)}; server logs in {servers[0].log_path.parent})", flush=True)
            print("Ctrl-C stops both.", flush=True)
            return _watch(servers, open_seconds)
    except UIStartError as exc:
        print(f"dartflow ui: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, _Stop):
        print("dartflow ui: stopped", file=sys.stderr)
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)


def _watch(servers: list[Server], open_seconds: float | None, poll_s: float = 1.0) -> int:
    """Sleep until the time is up (forever when None); 1 as soon as a server exits on its own."""
    deadline = None if open_seconds is None else time.monotonic() + open_seconds
    while deadline is None or time.monotonic() < deadline:
        time.sleep(poll_s if deadline is None else max(0.0, min(poll_s, deadline - time.monotonic())))
        for server in servers:
            if (code := exit_status(server.process)) is not None:
                print(f"dartflow ui: {_failure(server, f'exited with code {code}')}", file=sys.stderr)
                return 1
    return 0
