import random

from dartflow.storage import records_to_table, validate_trajectories
from dartflow.tasks.rollout.demonstrations import arithmetic_script, random_guess_script, warmup_demonstrations
from dartflow.tasks.rollout.prompts import ChatPrompter

ENVIRONMENTS = [("guess_number", {"low": 1, "high": 16}), ("arithmetic", {"max_operands": 2})]


def test_scripts_act_on_the_observation():
    rng = random.Random(0)
    guesses = {int(random_guess_script(["an integer between 3 and 5 (inclusive)", "3 is too low"], rng)) for _ in range(50)}
    assert guesses == {3, 4, 5}
    assert arithmetic_script(["Compute the value of this expression.\n\n(12 + 7) * 3"], rng) == "57"


def test_demonstrations_are_valid_store_rows_in_the_rollout_token_layout(tiny_model_dir):
    prompter = ChatPrompter.from_model_dir(tiny_model_dir)
    records = warmup_demonstrations(ENVIRONMENTS, prompter, 10, seed=3, max_turns=6, run_id="demo").records
    table = validate_trajectories(records_to_table(records))
    assert table.num_rows == 10
    assert set(table["source"].to_pylist()) == {"demonstration"}
    arithmetic = [r for r in records if r.environment == "arithmetic"]
    assert arithmetic and all(r.success for r in arithmetic)  # the script computes the answer
    multi_turn = next(r for r in records if len(r.turns) > 1)
    first, second = multi_turn.turns[0], multi_turn.turns[1]
    # Turn 2's prompt extends turn 1's prompt + response token-exactly, as in a rollout.
    prefix = list(first.prompt_token_ids) + list(first.response_token_ids)
    assert list(second.prompt_token_ids)[: len(prefix)] == prefix
    assert prompter.tokenizer.decode(first.response_token_ids, skip_special_tokens=True) == first.action


def test_miniwob_demonstrations_play_the_page_they_see_to_a_success(tiny_model_dir):
    prompter = ChatPrompter.from_model_dir(tiny_model_dir)
    environments = [("miniwob:click-checkboxes", {}), ("miniwob:enter-text", {}), ("miniwob:book-flight", {})]
    records = warmup_demonstrations(environments, prompter, 6, seed=1, max_turns=8, run_id="demo").records
    assert {r.environment for r in records} == {"miniwob:click-checkboxes", "miniwob:enter-text"}  # no book-flight script
    validate_trajectories(records_to_table(records))
    assert all(r.success for r in records)
    assert any(len(r.turns) > 1 for r in records) and records[0].metadata["script"] == "miniwob_click_checkboxes_script"
