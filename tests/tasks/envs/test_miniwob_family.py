"""miniwob:<task> at config time and its problems: names, params, the browser check, ids, splits (no browser started)."""

import pytest

from dartflow.tasks.envs.miniwob_browser import INSTALL_COMMAND
from dartflow.tasks.envs.miniwob_family import (
    DEFAULT_SOLUTION_STEPS,
    HELDOUT_SEED_OFFSET,
    SOLUTION_STEPS,
    available_tasks,
)
from dartflow.tasks.envs.registry import (
    EnvironmentConfigError,
    check_environment,
    make_environment,
    make_problem_source,
    registered_environments,
)


def test_the_family_is_registered_and_knows_every_miniwob_task():
    assert "miniwob:<task>" in registered_environments()
    tasks = available_tasks()
    assert len(tasks) == 128 and {"click-button", "enter-text", "book-flight", "flight.AA"} <= set(tasks)
    assert set(SOLUTION_STEPS) <= set(tasks)  # the difficulty table names real tasks


@pytest.mark.parametrize(
    "name, params, complaint",
    [
        ("miniwob:click-buton", {}, "unknown MiniWoB task 'click-buton'. Did you mean: click-button"),
        ("miniwob:", {}, "name a task after 'miniwob:'"),
        ("miniwob:click-button", {"max_turn": 3}, "unknown parameter 'max_turn'"),
        ("miniwob:click-button", {"max_turns": 0}, "parameter 'max_turns'"),
        ("miniwob:click-button", {"reward": "binary"}, "parameter 'reward'"),
        ("miniwob:click-button", {"max_observation_chars": 10}, "parameter 'max_observation_chars'"),
    ],
)
def test_bad_names_and_params_fail_at_config_time(name, params, complaint):
    with pytest.raises(EnvironmentConfigError, match=complaint):
        check_environment(name, params)


def test_a_missing_browser_fails_at_config_time_with_the_command_that_installs_it(monkeypatch):
    monkeypatch.delenv("MINIWOB_CHROME_BINARY", raising=False)
    monkeypatch.delenv("MINIWOB_CHROMEDRIVER", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(EnvironmentConfigError, match=INSTALL_COMMAND) as missing:
        check_environment("miniwob:click-button", {})
    assert "Chromium and chromedriver not found" in str(missing.value)
    with pytest.raises(EnvironmentConfigError, match=INSTALL_COMMAND):
        make_environment("miniwob:click-button")


def test_a_browser_path_that_is_not_there_is_named(monkeypatch):
    monkeypatch.setenv("MINIWOB_CHROME_BINARY", "/nonexistent/chromium")
    with pytest.raises(EnvironmentConfigError, match="MINIWOB_CHROME_BINARY=/nonexistent/chromium is not an executable"):
        check_environment("miniwob:click-button", {})


def test_the_config_accepts_miniwob_environments_and_refuses_unknown_tasks(tmp_path):
    from dartflow.config import ConfigError, load_config

    path = tmp_path / "miniwob.yaml"
    path.write_text("environments:\n  - name: miniwob:click-button\n    params: {max_turns: 3}\n")
    assert load_config(path).environments[0].params == {"max_turns": 3}
    path.write_text("environments:\n  - name: miniwob:click-buttton\n")
    with pytest.raises(ConfigError, match="unknown MiniWoB task"):
        load_config(path)


def test_a_problem_is_a_task_and_a_seed_with_disjoint_train_and_heldout_seeds():
    source = make_problem_source("miniwob:click-checkboxes", {"train_size": 50, "heldout_size": 5})
    assert (source.size("train"), source.size("heldout")) == (50, 5)
    train, heldout = source.problem("train", 7), source.heldout(5)[2]
    assert train.problem_id == "miniwob:click-checkboxes/train/7"
    assert train.params == {"task": "click-checkboxes", "seed": 7, "data_mode": "train"}
    assert heldout.problem_id == "miniwob:click-checkboxes/heldout/2"
    assert heldout.params == {"task": "click-checkboxes", "seed": HELDOUT_SEED_OFFSET + 2, "data_mode": "test"}
    assert (train.environment, train.max_turns, train.difficulty) == ("miniwob:click-checkboxes", 10, 3.0)
    assert source.problem("train", 7) == train  # the same arguments, the same problem
    with pytest.raises(IndexError):
        source.problem("train", 50)


def test_difficulty_is_the_solution_length_unless_given_and_ids_change_with_problem_defining_params():
    steps = lambda name, **params: make_problem_source(name, params).problem("train", 0)  # noqa: E731
    assert steps("miniwob:click-button").difficulty == 1.0
    assert steps("miniwob:drag-cube").difficulty == DEFAULT_SOLUTION_STEPS  # not in the table
    assert steps("miniwob:click-button", difficulty=2.5).difficulty == 2.5
    assert steps("miniwob:click-button", max_observation_chars=500).problem_id == "miniwob:click-button/train/0"
    shifted = steps("miniwob:click-button", seed=100)
    assert shifted.problem_id.startswith("miniwob:click-button@") and shifted.params["seed"] == 100


def test_building_an_environment_starts_no_browser():
    # The rollout prompter builds a throwaway instance to read action_format: that must stay cheap.
    environment = make_environment("miniwob:click-button")
    assert environment._page is None and "click(ref)" in environment.action_format
    environment.close()
