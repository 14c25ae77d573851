"""miniwob:<task> in a real headless Chromium: scripted episodes earn MiniWoB's reward through the text
grammar, bad actions are answered, a crashed browser is replaced, and closing leaves no process behind.

Starting a browser costs ~1 s: the tests that need no particular task share one module-wide instance.
"""

import os
import signal
import time

import psutil
import pytest

from dartflow.tasks.envs.miniwob_browser import BrowserError, SCRATCH_PREFIX
from dartflow.tasks.envs.miniwob_demos import TASK_SCRIPTS, next_action
from dartflow.tasks.envs.registry import make_environment, make_problem_source

pytestmark = pytest.mark.slow

SHARED_TASK = "miniwob:click-checkboxes"


def browser_pids(environment) -> set[int]:
    """The live processes of an instance's browser: chromedriver's process group and the reaper."""
    processes = environment._page.instance.processes
    group = {p.pid for p in psutil.process_iter() if _group_of(p.pid) == processes.group}
    return group | {processes.reaper.pid}


def _group_of(pid):
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def alive(pids) -> set[int]:
    """Those of `pids` still running (a zombie has exited; PID 1 reaps it in its own time)."""
    running = set()
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                running.add(pid)
        except psutil.NoSuchProcess:
            pass
    return running


def wait_until_gone(pids, timeout_s=5.0) -> set[int]:
    deadline = time.monotonic() + timeout_s
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive(pids)


def browser_main_processes(environment) -> list[psutil.Process]:
    """Chromium's browser process (not its renderers, GPU or utility children)."""
    group = environment._page.instance.processes.group
    return [
        p for p in psutil.process_iter(["name", "cmdline"])
        if _group_of(p.pid) == group and p.info["name"] == "chromium"
        and not any(argument.startswith("--type=") for argument in p.info["cmdline"] or [])
    ]


@pytest.fixture(scope="module")
def shared():
    environment = make_environment(SHARED_TASK, {"max_turns": 4})
    source = make_problem_source(SHARED_TASK, {"max_turns": 4})
    environment.reset(source.problem("train", 0))  # starts the browser
    yield environment, source
    pids = browser_pids(environment)  # a test may have replaced the browser
    environment.close()
    assert wait_until_gone(pids) == set()


def play(environment, task, observation, max_turns):
    for _ in range(max_turns):
        result = environment.step(next_action(task, observation))
        if result.done:
            return result
        assert not result.info["invalid_action"], result.observation
        observation = result.observation
    raise AssertionError(f"{task}: not done in {max_turns} turns")


@pytest.mark.parametrize("task", sorted(TASK_SCRIPTS))
def test_a_scripted_episode_earns_the_checkers_reward(task):
    name = f"miniwob:{task}"
    environment, source = make_environment(name), make_problem_source(name)
    try:
        for problem in (source.problem("train", 3), source.problem("heldout", 0)):
            result = play(environment, task, environment.reset(problem), problem.max_turns)
            assert (result.reward, result.info["success"], result.info["raw_reward"]) == (1.0, True, 1.0), result
            assert result.observation.startswith("Task completed")
    finally:
        environment.close()


def test_bad_actions_are_answered_with_the_page_and_a_penalty(shared):
    environment, source = shared
    observation = environment.reset(source.problem("train", 1))
    for action, complaint in [
        ("hello", "'hello' is not an action: write exactly one of click(ref), type(ref, \"text\"), press(key) or click_xy(x, y)"),
        ("click(999)", "there is no element [999] on the page"),
        ("click_xy(5000, 10)", "(5000, 10) is off the page (0 <= x < "),
    ]:
        result = environment.step(action)
        message, page = result.observation.split("\n", 1)
        assert message.startswith(f"Invalid action: {complaint}") and message.endswith(". Nothing was done.")
        assert page == observation
        assert (result.reward, result.done, result.info["invalid_action"]) == (-0.1, False, True)
    result = environment.step("press(Escape)")  # valid: carried out, nothing happens
    assert (result.reward, result.done, result.info) == (0.0, True, {"invalid_action": False, "turn": 4, "success": False})
    assert result.observation == "Out of turns: the task was not completed in 4 actions."
    over = environment.step("click(4)")
    assert over.done and over.info["episode_over"]


def test_a_wrong_submission_fails_with_the_checkers_verdict(shared):
    environment, source = shared
    observation = environment.reset(source.problem("train", 2))
    assert "Select nothing" not in observation  # so submitting no box is wrong
    submit = next(line for line in observation.split("\n") if '"Submit"' in line).split("]")[0][1:]
    result = environment.step(f"click({submit})")
    # click-checkboxes gives partial credit: each wrong box takes a share of the raw reward off 1.
    assert (result.reward, result.done, result.info["success"]) == (0.0, True, False)
    assert result.info["raw_reward"] < 0
    assert result.observation == f"Task failed: MiniWoB's checker gave reward {result.info['raw_reward']:.2f}."


def test_typing_and_keys_reach_the_page(shared):
    environment = make_environment("miniwob:enter-text")
    source = make_problem_source("miniwob:enter-text")
    try:
        observation = environment.reset(source.problem("train", 0))
        field = next(line for line in observation.split("\n") if "input_text" in line).split("]")[0][1:]
        result = environment.step(f'type({field}, "abc")')
        assert 'value="abc" focused' in result.observation
        result = environment.step("press(Backspace)")
        assert 'value="ab" focused' in result.observation
        result = environment.step("press(ctrl+a)")
        result = environment.step('press("Z")')
        assert 'value="Z" focused' in result.observation
    finally:
        environment.close()


def test_resets_reuse_one_browser(shared):
    environment, source = shared
    before = environment._page.instance.processes.group
    for index in range(3):
        environment.reset(source.problem("heldout", index))
    assert environment._page.instance.processes.group == before


def test_a_time_limit_ends_the_episode_as_miniwob_would():
    environment = make_environment("miniwob:click-button", {"time_limit_s": 0.3})
    source = make_problem_source("miniwob:click-button", {"time_limit_s": 0.3})
    try:
        observation = environment.reset(source.problem("train", 0))
        time.sleep(1.0)  # well past the limit even if the page's timer fires late on a busy machine
        result = environment.step(next_action("click-button", observation))
        assert (result.done, result.info["success"], result.info["reason"]) == (True, False, "timed out")
    finally:
        environment.close()


def test_a_crashed_browser_raises_and_the_next_reset_starts_a_new_one(shared):
    environment, source = shared
    environment.reset(source.problem("train", 0))
    old = browser_pids(environment)
    for process in browser_main_processes(environment):
        process.send_signal(signal.SIGKILL)
    with pytest.raises(BrowserError, match="the browser failed during step 1"):
        environment.step("click(6)")
    observation = environment.reset(source.problem("train", 1))
    assert observation.startswith("Instruction: Select")
    assert wait_until_gone(old) == set()  # the crashed browser's leftovers were killed
    assert not old & browser_pids(environment)


def test_no_browser_process_outlives_close():
    environment = make_environment("miniwob:focus-text")
    environment.reset(make_problem_source("miniwob:focus-text").problem("train", 0))
    pids = browser_pids(environment)
    scratch = environment._page.instance.processes.scratch
    assert len(pids) >= 4 and SCRATCH_PREFIX in scratch
    environment.close()
    assert wait_until_gone(pids) == set()
    assert not os.path.exists(scratch)
