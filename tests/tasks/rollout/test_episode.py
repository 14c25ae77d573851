"""The episode loop and its prompts, on an in-process fake engine and cluster (no vLLM, no processes).

The real engine and cluster run the same loop in test_episode_engine.py.
"""

import asyncio

import pytest
from rollout_fakes import FakeCluster, FakeEngine
from transformers import AutoTokenizer

from dartflow.storage import records_to_table, validate_trajectories
from dartflow.tasks.envs.registry import make_problem_source
from dartflow.tasks.rollout.episode import EpisodeSettings, run_episode, turn_limit
from dartflow.tasks.rollout.generation import SamplingSettings
from dartflow.tasks.rollout.prompts import (
    ChatPrompter, action_format_of, default_system_prompt, system_prompt_from, template_between,
)

GUESS_PARAMS = {"high": 16}  # one level over [1, 16], 6 turns
SETTINGS = EpisodeSettings(max_turns=8, max_new_tokens=16, sampling=SamplingSettings(temperature=1.0))


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def prompter(tokenizer):
    return ChatPrompter(tokenizer)


@pytest.fixture(scope="module")
def guess_problem():
    problem = make_problem_source("guess_number", GUESS_PARAMS).problem("train", 3)
    assert problem.max_turns == 6 and problem.params["secret"] not in (1, 2)
    return problem


def play(problem, engine, prompter, settings=SETTINGS, cluster=None, **kwargs):
    cluster = cluster or FakeCluster()
    return asyncio.run(run_episode(
        problem, engine=engine, cluster=cluster, prompter=prompter, settings=settings, group_id="g1",
        params=GUESS_PARAMS if problem.environment == "guess_number" else None, **kwargs,
    ))


def guesses(*texts):
    """A fake engine reply script: the n-th call answers texts[n] (the last one repeats)."""
    return lambda prompt, call: texts[min(call, len(texts) - 1)]


# ---- pure rules ---------------------------------------------------------------------------------


def test_turn_limit_is_the_least_of_the_limits_that_are_set():
    assert turn_limit(8, None) == 8
    assert turn_limit(8, 6) == 6
    assert turn_limit(8, 6, 3) == 3
    assert turn_limit(2, 6, None) == 2


def test_settings_come_from_the_rollout_config():
    from dartflow.config import RolloutConfig

    settings = EpisodeSettings.from_config(RolloutConfig(max_turns=3, max_new_tokens=9, temperature=0.7, top_p=0.9))
    assert (settings.max_turns, settings.max_new_tokens, settings.on_length_cut) == (3, 9, "truncate")
    assert settings.sampling == SamplingSettings(temperature=0.7, top_p=0.9)


def test_a_seed_gives_each_turn_its_own_reproducible_request_seed():
    seeds = [SETTINGS.sampling_for(11, turn).seed for turn in range(3)]
    assert len(set(seeds)) == 3 and seeds == [SETTINGS.sampling_for(11, turn).seed for turn in range(3)]
    assert SETTINGS.sampling_for(None, 0) is SETTINGS.sampling


def test_template_between_takes_the_response_stop_token_off_the_closing():
    previous = "<s>user\nQ</e>\n<s>assistant\n"
    with_assistant = previous + "42</e>\n"
    following = with_assistant + "<s>user\nlower</e>\n<s>assistant\n"
    assert template_between(previous, with_assistant, following, "42", "</e>") == "\n<s>user\nlower</e>\n<s>assistant\n"
    assert template_between(previous, with_assistant, following, "42", "") == "</e>\n<s>user\nlower</e>\n<s>assistant\n"
    # A template that rewrites the assistant's text (here: strips it) has no prefix property.
    assert template_between(previous, previous + "42</e>\n", following, " 42 ", "</e>") is None
    assert template_between(previous, with_assistant, "<s>system\n" + following, "42", "</e>") is None


# ---- prompts ------------------------------------------------------------------------------------


def test_first_prompt_is_the_chat_template_with_the_action_format_as_system_message(prompter, tokenizer):
    action_format = action_format_of("guess_number", GUESS_PARAMS)
    assert action_format.startswith("One integer")
    conversation = prompter.start("Guess a number.", action_format)
    expected = tokenizer.apply_chat_template(
        [
            {"role": "system", "content": default_system_prompt(action_format)},
            {"role": "user", "content": "Guess a number."},
        ],
        tokenize=False, add_generation_prompt=True,
    )
    assert tokenizer.decode(list(conversation.prompt_ids)) == expected
    assert prompter.stop_token_ids == (tokenizer.eos_token_id,)


def test_a_configured_system_prompt_fills_in_the_action_format_and_none_leaves_the_system_message_out(tokenizer):
    custom = ChatPrompter(tokenizer, system_prompt=system_prompt_from("Play {a} game. {action_format} {x}"))
    assert custom.start("Guess.", "One integer.").messages[0] == {
        "role": "system", "content": "Play {a} game. One integer. {x}",  # other braces are text
    }
    bare = ChatPrompter(tokenizer, system_prompt=system_prompt_from(None)).start("Guess.", "One integer.")
    assert bare.messages == ({"role": "user", "content": "Guess."},)
    expected = tokenizer.apply_chat_template([{"role": "user", "content": "Guess."}], tokenize=False, add_generation_prompt=True)
    assert tokenizer.decode(list(bare.prompt_ids)) == expected


def test_next_prompt_extends_prompt_and_sampled_response_token_exactly(prompter, tokenizer):
    first = prompter.start("Guess a number between 1 and 16.", "One integer.")
    response = tokenizer.encode("8", add_special_tokens=False) + [tokenizer.eos_token_id]
    second = prompter.extend(first, response, prompter.action_text(response), "8 is too high.")
    assert second.incremental and prompter.action_text(response) == "8"
    assert second.prompt_ids[: len(first.prompt_ids) + len(response)] == first.prompt_ids + tuple(response)
    # For plain text the exact extension is what re-rendering the whole history gives.
    assert list(second.prompt_ids) == prompter.encode(prompter.render(second.messages, generation_prompt=True))


def test_sampled_tokens_are_kept_even_where_retokenizing_their_text_differs(prompter, tokenizer):
    first = prompter.start("Guess.", "One integer.")
    # "8" spelled by two odd tokens plus a stray special token: its text re-encodes differently.
    response = [tokenizer.convert_tokens_to_ids("<|im_start|>")] + tokenizer.encode("8", add_special_tokens=False)
    second = prompter.extend(first, response, prompter.action_text(response), "lower")
    assert second.prompt_ids[len(first.prompt_ids) : len(first.prompt_ids) + len(response)] == tuple(response)
    # Cut short (no end-of-turn token): the template's end of the assistant message is added.
    tail = tokenizer.decode(list(second.prompt_ids[len(first.prompt_ids) + len(response) :]))
    assert tail.startswith("<|im_end|>\n<|im_start|>user\nlower")


# ---- the loop -----------------------------------------------------------------------------------


def check_storable(*records):
    validate_trajectories(records_to_table(records, run_id="test"))


def test_episode_plays_until_the_environment_is_done(tokenizer, prompter, guess_problem):
    secret = guess_problem.params["secret"]
    engine = FakeEngine(tokenizer, guesses("1", "two", str(secret)))
    record = play(guess_problem, engine, prompter)
    assert record.finish_reason == "done" and record.success
    assert [turn.action for turn in record.turns] == ["1", "two", str(secret)]
    assert [turn.reward for turn in record.turns] == [0.0, 0.0, 1.0]
    assert record.turns[0].observation.startswith("I am thinking of an integer between 1 and 16")
    assert "is too low" in record.turns[1].observation and "Invalid guess" in record.turns[2].observation
    for turn, call in zip(record.turns, engine.calls):
        assert list(turn.prompt_token_ids) == call["prompt"]
        assert len(turn.behavior_logprobs) == len(turn.response_token_ids) >= 2
        assert turn.response_token_ids[-1] == tokenizer.eos_token_id
        assert (turn.min_policy_version, turn.max_policy_version) == (0, 0)
    # Each prompt extends the previous prompt + response.
    for before, after in zip(record.turns, record.turns[1:]):
        head = list(before.prompt_token_ids) + list(before.response_token_ids)
        assert list(after.prompt_token_ids[: len(head)]) == head
    assert record.metadata["turn_limit"] == 6 and record.metadata["prompt_incremental"] is True
    assert (record.group_id, record.split, record.problem_id) == ("g1", "train", guess_problem.problem_id)
    check_storable(record)


def test_each_turn_keeps_the_policy_version_that_generated_it(tokenizer, prompter, guess_problem):
    # A weight swap lands after each turn's response.
    engine = FakeEngine(tokenizer, lambda prompt, call: setattr(engine, "policy_version", call + 1) or "0")
    record = play(guess_problem, engine, prompter, settings=EpisodeSettings(max_turns=3, max_new_tokens=8))
    assert [(t.min_policy_version, t.max_policy_version) for t in record.turns] == [(0, 0), (1, 1), (2, 2)]
    check_storable(record)


def test_turn_limit_ends_the_episode_as_truncated(tokenizer, prompter, guess_problem):
    record = play(guess_problem, FakeEngine(tokenizer, guesses("1")), prompter, max_turns=2)
    assert record.finish_reason == "truncated" and record.metadata["truncated_by"] == "max_turns"
    assert len(record.turns) == 2 and not record.success


def test_a_response_cut_at_max_new_tokens_ends_the_episode_unsent(tokenizer, prompter, guess_problem):
    cluster = FakeCluster()
    record = play(guess_problem, FakeEngine(tokenizer, guesses("12"), cut=True), prompter, cluster=cluster)
    assert record.finish_reason == "truncated" and record.metadata["truncated_by"] == "max_new_tokens"
    assert len(record.turns) == 1 and len(record.turns[0].response_token_ids) == SETTINGS.max_new_tokens
    assert record.turns[0].reward == 0.0 and record.turns[0].environment_seconds == 0.0
    check_storable(record)


def test_with_on_length_cut_act_a_cut_response_is_still_an_action(tokenizer, prompter, guess_problem):
    settings = EpisodeSettings(max_turns=3, max_new_tokens=4, on_length_cut="act")
    record = play(guess_problem, FakeEngine(tokenizer, guesses("1"), cut=True), prompter, settings=settings)
    assert record.finish_reason == "truncated" and record.metadata["truncated_by"] == "max_turns"
    assert len(record.turns) == 3 and "Invalid guess" in record.turns[1].observation


def test_a_prompt_past_the_context_limit_ends_the_episode_as_truncated(tokenizer, prompter, guess_problem):
    record = play(guess_problem, FakeEngine(tokenizer, guesses("1"), max_context_tokens=1), prompter)
    assert record.finish_reason == "truncated" and record.metadata["truncated_by"] == "max_context_tokens"
    assert record.turns == [] and record.min_policy_version == record.max_policy_version == 0
    second_prompt = len(play(guess_problem, FakeEngine(tokenizer, guesses("1")), prompter).turns[1].prompt_token_ids)
    engine = FakeEngine(tokenizer, guesses("1"), max_context_tokens=second_prompt - 1)
    record = play(guess_problem, engine, prompter)
    assert record.finish_reason == "truncated" and len(record.turns) == 1
    assert record.metadata["prompt_tokens"] == second_prompt
    check_storable(record)


def test_an_environment_error_ends_the_episode_with_its_reason(tokenizer, prompter, guess_problem):
    engine = FakeEngine(tokenizer, guesses("1"))
    engine.policy_version = 4
    record = play(guess_problem, engine, prompter, cluster=FakeCluster(fail_reset={guess_problem.problem_id}))
    assert record.finish_reason == "error" and record.turns == []
    assert record.metadata["error_kind"] == "exception" and "boom" in record.metadata["error_reason"]
    assert record.min_policy_version == record.max_policy_version == 4

    record = play(guess_problem, engine, prompter, cluster=FakeCluster(fail_step={guess_problem.problem_id: 2}))
    assert record.finish_reason == "error" and record.metadata["error_kind"] == "timeout"
    assert len(record.turns) == 2 and record.turns[1].reward == 0.0  # the failed turn is kept
    failed_reset = play(guess_problem, engine, prompter, cluster=FakeCluster(fail_reset={guess_problem.problem_id}))
    check_storable(record, failed_reset)


def test_an_interrupted_generation_ends_the_episode_as_interrupted(tokenizer, prompter, guess_problem):
    engine = FakeEngine(tokenizer, guesses("1"))
    engine.interrupting = True
    record = play(guess_problem, engine, prompter)
    assert record.finish_reason == "interrupted" and record.turns == []
    assert record.metadata["interrupted_turn"] == 0 and record.metadata["interrupted_tokens"] == 1


def test_single_turn_environments_end_after_one_answer(tokenizer, prompter):
    problem = make_problem_source("arithmetic", {}).problem("train", 0)
    answer = problem.params["answer"]
    record = play(problem, FakeEngine(tokenizer, guesses(answer)), prompter)
    assert record.finish_reason == "done" and record.success and record.reward is None
    assert [turn.reward for turn in record.turns] == [1.0]


def test_episode_seed_is_passed_to_every_request(tokenizer, prompter, guess_problem):
    engine = FakeEngine(tokenizer, guesses("1"))
    play(guess_problem, engine, prompter, seed=5, max_turns=3)
    assert [call["sampling"].seed for call in engine.calls] == [SETTINGS.sampling_for(5, t).seed for t in range(3)]
    assert all(call["stop"] == [tokenizer.eos_token_id] for call in engine.calls)
