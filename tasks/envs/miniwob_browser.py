"""The headless Chromium behind each `miniwob:<task>` environment instance: found, started, never left behind.

Each browser is one chromedriver and the Chromium it drives, started in a process group of their own
(a new session), so that one signal reaches every process of that browser. It ends by one of
- `close()`: WebDriver quit, then SIGKILL to the group (whatever quit left behind), scratch removed;
- the owner dying without closing it (a cluster worker killed at a step timeout, a SIGKILL): a
  reaper started with the browser (`sh`, in a session of its own, blocked reading a pipe whose write
  end only the owner holds) reads EOF when the kernel closes the owner's files, kills the group and
  removes the scratch folder.
A browser that crashes or hangs (each WebDriver command is bounded by `command_timeout_s`) makes the
environment raise `BrowserError`; its owner closes it (the cluster's worker drops the instance; an
in-process user's next reset restarts it). Chromium's crash handlers (chrome_crashpad_handler) leave
the group for a session of their own; they exit by themselves once the browser is gone.

Selenium must not look for drivers on the internet: SE_OFFLINE and miniwob's MINIWOB_CHROME_BINARY /
MINIWOB_CHROMEDRIVER are set (if unset) before a browser starts.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from dartflow.tasks.envs.problems import EnvironmentConfigError

INSTALL_COMMAND = "apt-get install -y chromium chromium-driver"
# The browser's scratch folder (its TMPDIR: chromedriver makes Chromium's profile there), whose
# name also marks the browser's processes: Chromium's --user-data-dir lies inside it.
SCRATCH_PREFIX = "dartflow-miniwob-"
_CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_CHROME_ARGUMENTS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--mute-audio")
_PAGE_LOAD_WAIT_S = 5.0
_REAPER_SCRIPT = 'read -r _; kill -KILL "-$1" 2>/dev/null; rm -rf "$2"'  # dash: no "--" after kill


class BrowserError(RuntimeError):
    """The browser of an environment instance crashed, hung or went away; the instance must be closed."""


@dataclass(frozen=True)
class BrowserPaths:
    chromium: str
    chromedriver: str


def find_browser() -> BrowserPaths:
    """Chromium and chromedriver on this machine, or EnvironmentConfigError saying how to install them."""
    chromium = _configured_or_found("MINIWOB_CHROME_BINARY", _CHROMIUM_NAMES)
    chromedriver = _configured_or_found("MINIWOB_CHROMEDRIVER", ("chromedriver",))
    missing = [name for name, path in (("Chromium", chromium), ("chromedriver", chromedriver)) if path is None]
    if missing:
        raise EnvironmentConfigError(
            f"miniwob: {' and '.join(missing)} not found; MiniWoB tasks run in a headless Chromium. "
            f"Install it with: {INSTALL_COMMAND} (or set MINIWOB_CHROME_BINARY and MINIWOB_CHROMEDRIVER)"
        )
    return BrowserPaths(chromium, chromedriver)


def _configured_or_found(variable: str, names: tuple[str, ...]) -> str | None:
    configured = os.environ.get(variable)
    if configured:
        if not (os.path.isfile(configured) and os.access(configured, os.X_OK)):
            raise EnvironmentConfigError(
                f"miniwob: {variable}={configured} is not an executable file. Install the browser with: "
                f"{INSTALL_COMMAND}, or point {variable} at it"
            )
        return configured
    return next((path for path in map(shutil.which, names) if path), None)


def use_offline_selenium(paths: BrowserPaths) -> None:
    os.environ.setdefault("SE_OFFLINE", "true")
    os.environ.setdefault("MINIWOB_CHROME_BINARY", paths.chromium)
    os.environ.setdefault("MINIWOB_CHROMEDRIVER", paths.chromedriver)


class BrowserProcesses:
    """chromedriver's process group (Chromium runs inside it), its scratch folder, and its reaper."""

    def __init__(self, driver_process: subprocess.Popen, scratch: str):
        self.driver_process = driver_process
        self.group = driver_process.pid  # a session leader: its pid is the group id
        self.scratch = scratch
        self.reaper = subprocess.Popen(
            ["/bin/sh", "-c", _REAPER_SCRIPT, "dartflow-miniwob-reaper", str(self.group), scratch],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )

    def kill(self) -> None:
        """SIGKILL the whole browser, reap what is ours to reap, remove the scratch folder; idempotent."""
        try:
            os.killpg(self.group, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        _reap(self.driver_process)
        # Our own cleanup is done: the reaper must not signal a group id the system may reuse.
        if self.reaper.poll() is None:
            self.reaper.kill()
        _reap(self.reaper)
        shutil.rmtree(self.scratch, ignore_errors=True)


def _reap(process: subprocess.Popen) -> None:
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass  # unkillable (D state): nothing more we can do here
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            stream.close()


@lru_cache(maxsize=None)
def _service_class() -> type:
    from selenium.webdriver.chrome.service import Service

    class GroupedChromeService(Service):
        """chromedriver in a new session, with a reaper from the moment it exists.

        `_start_process` is selenium's (pinned 4.x) private hook between Popen and the wait for
        the port: the reaper must exist before anything can hang, so `start()` is too late.
        """

        scratch: str = ""
        processes: BrowserProcesses | None = None

        def _start_process(self, path: str) -> None:
            super()._start_process(path)
            self.processes = BrowserProcesses(self.process, self.scratch)

    return GroupedChromeService


def start_chrome(paths: BrowserPaths, command_timeout_s: float) -> tuple[Any, BrowserProcesses]:
    """A WebDriver on a fresh headless Chromium, and the processes behind it."""
    use_offline_selenium(paths)
    from selenium import webdriver

    scratch = tempfile.mkdtemp(prefix=SCRATCH_PREFIX)
    options = webdriver.ChromeOptions()
    for argument in _CHROME_ARGUMENTS:
        options.add_argument(argument)
    options.binary_location = paths.chromium
    # Not --user-data-dir: with a profile of its own, headless Chromium's page never has the focus,
    # and tasks that wait for a focus event (focus-text) cannot be solved.
    service = _service_class()(
        executable_path=paths.chromedriver, env={**os.environ, "TMPDIR": scratch}, popen_kw={"start_new_session": True}
    )
    service.scratch = scratch
    try:
        driver = webdriver.Chrome(service=service, options=options)
    except BaseException as error:
        if service.processes is not None:
            service.processes.kill()
        shutil.rmtree(scratch, ignore_errors=True)
        if isinstance(error, Exception):
            raise BrowserError(f"Chromium did not start: {type(error).__name__}: {error}") from error
        raise
    assert service.processes is not None, "selenium started chromedriver without _start_process"
    driver.command_executor._client_config.timeout = command_timeout_s
    return driver, service.processes


@lru_cache(maxsize=None)
def browser_instance_class() -> type:
    """miniwob's SeleniumInstance, with our browser (grouped, reaped, bounded) instead of its own."""
    from miniwob.selenium_instance import SeleniumInstance
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait

    class GroupedBrowserInstance(SeleniumInstance):
        def __init__(self, paths: BrowserPaths, command_timeout_s: float, **kwargs: Any):
            self.paths, self.command_timeout_s = paths, command_timeout_s
            self.processes: BrowserProcesses | None = None
            super().__init__(**kwargs)

        def create_driver(self) -> None:
            """As miniwob's own, on our browser: the task page, loaded up to its start screen."""
            self.driver, self.processes = start_chrome(self.paths, self.command_timeout_s)
            try:
                self.driver.implicitly_wait(_PAGE_LOAD_WAIT_S)
                self.driver.get(self.url)
                WebDriverWait(self.driver, _PAGE_LOAD_WAIT_S).until(
                    expected_conditions.element_to_be_clickable((By.ID, self.SYNC_SCREEN_ID))
                )
                self.inner_width, self.inner_height = self.driver.execute_script(
                    "return [window.innerWidth, window.innerHeight];"
                )
            except BaseException:
                self.processes.kill()
                raise

        def close(self, graceful: bool = True) -> None:
            """Quit the WebDriver (skipped for a failed browser: it may hang), then kill what is left."""
            if graceful and getattr(self, "driver", None) is not None:
                try:
                    self.driver.quit()
                except Exception:
                    pass  # the group kill below ends it either way
            if self.processes is not None:
                self.processes.kill()
            self.died = True

    return GroupedBrowserInstance


@lru_cache(maxsize=None)
def miniwob_page_class() -> type:
    """miniwob's MiniWoBEnvironment on a GroupedBrowserInstance (its gym API: reset, step, create_action)."""
    from miniwob.environment import MiniWoBEnvironment

    instance_class = browser_instance_class()

    class MiniWoBPage(MiniWoBEnvironment):
        def __init__(self, task: str, paths: BrowserPaths, command_timeout_s: float, **kwargs: Any):
            self._browser = (paths, command_timeout_s)
            super().__init__(subdomain=task, **kwargs)

        def _hard_reset_instance(self) -> None:
            if getattr(self, "instance", None):
                self.instance.close()
            paths, command_timeout_s = self._browser
            self.instance = instance_class(paths, command_timeout_s, index=0, **self.instance_kwargs)
            self.instance.start()
            self.instance.wait()

    return MiniWoBPage
