"""The trainer's checkpoints in the real vLLM engine (CPU): loaded at start and swapped in place.

The trainer's model here has *tied* embeddings, the case where an in-place reload used to leave the
engine's packed LM head stale (STACK.md): its checkpoints are written untied, so a plain
`reload_weights` must give the log-probs transformers computes on the same folder. With LoRA
(training.lora) the engine loads the merged weights and must give the adapted policy's log-probs.
"""

from dataclasses import dataclass
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from dartflow.tasks.models.agreement import chat_prompt_ids, policy_token_logprobs, vllm_engine, vllm_token_logprobs
from dartflow.tasks.training.checkpoints import load_policy
from dartflow.tasks.training.lora import LoraSettings
from dartflow.tasks.training.settings import TrainerSettings
from dartflow.tasks.training.trainer import Trainer

from training_helpers import multi_turn_records, table

pytestmark = pytest.mark.slow

LOGPROB_TOLERANCE = 1e-4  # transformers vs vLLM CPU float32 on tiny models: ~5e-7 measured
SETTINGS = TrainerSettings(lr=1e-2, batch_size=4, micro_batch_size=4)


def max_gap(a, b) -> float:
    return max(abs(x - y) for x, y in zip(a, b))


@dataclass
class Engine:
    llm: object
    first: Path  # the checkpoint it started from: v0 of a trainer on the tied tiny model
    sequence: list[int]
    start_logprobs: list[float]  # the engine's log-probs of `sequence` right after its start


@pytest.fixture(scope="module")
def engine(tiny_tied_model_dir, tmp_path_factory):
    """One engine for the module's tests (a vLLM start costs ~25 s here); each test swaps in its own weights."""
    first = Trainer(tiny_tied_model_dir, checkpoint_root=tmp_path_factory.mktemp("start"), settings=SETTINGS).save_checkpoint()
    tokenizer = AutoTokenizer.from_pretrained(first)
    sequence = chat_prompt_ids(tokenizer, "Guess the number between 1 and 100.") + tokenizer.encode("My guess is 50.<|im_end|>")
    with vllm_engine(first) as llm:
        yield Engine(llm, first, sequence, vllm_token_logprobs(llm, sequence))


def swap(llm, checkpoint: Path) -> None:
    llm.collective_rpc("reload_weights", kwargs={"weights_path": str(checkpoint), "is_checkpoint_format": True})
    llm.reset_prefix_cache()


def test_checkpoints_load_in_vllm_and_swap_in_place_with_transformers_log_probs(engine, tiny_tied_model_dir, tmp_path):
    trainer = Trainer(tiny_tied_model_dir, checkpoint_root=tmp_path, settings=SETTINGS)
    sequence, engine_first = engine.sequence, engine.start_logprobs
    assert max_gap(engine_first, policy_token_logprobs(load_policy(engine.first), sequence)) <= LOGPROB_TOLERANCE
    assert max_gap(engine_first, policy_token_logprobs(trainer.policy, sequence)) <= LOGPROB_TOLERANCE

    for seed in range(3):
        batch = table(multi_turn_records(groups=1, group_size=4, vocab_size=1024, seed=seed))
        assert not trainer.train_step(batch).skipped
    later = trainer.save_checkpoint()
    swap(engine.llm, later)
    engine_later = vllm_token_logprobs(engine.llm, sequence)

    expected_later = policy_token_logprobs(load_policy(later), sequence)
    print(f"engine vs transformers after the swap: {max_gap(engine_later, expected_later):.2e}")
    assert max_gap(engine_later, expected_later) <= LOGPROB_TOLERANCE
    assert max_gap(engine_later, engine_first) > 100 * LOGPROB_TOLERANCE  # the weights did change


def test_after_one_lora_step_the_engine_samples_the_adapted_policy(engine, tiny_tied_model_dir, tmp_path):
    settings = TrainerSettings(**{**SETTINGS.to_dict(), "lora": LoraSettings(enabled=True, rank=4, alpha=8.0)})
    trainer = Trainer(tiny_tied_model_dir, checkpoint_root=tmp_path, settings=settings)
    records = multi_turn_records(groups=1, group_size=4, vocab_size=1024, seed=0)
    for record, reward in zip(records, (1.0, 0.0, 0.0, 1.0)):
        record.reward = reward
    assert not trainer.train_step(table(records)).skipped
    swap(engine.llm, trainer.save_checkpoint())
    engine_lora = vllm_token_logprobs(engine.llm, engine.sequence)

    adapted = policy_token_logprobs(trainer.policy, engine.sequence)  # transformers + peft, adapters active
    print(f"engine vs the adapted policy after a LoRA step: {max_gap(engine_lora, adapted):.2e}")
    assert max_gap(engine_lora, adapted) <= LOGPROB_TOLERANCE
    assert max_gap(engine_lora, engine.start_logprobs) > 100 * LOGPROB_TOLERANCE  # the adapters did move it
