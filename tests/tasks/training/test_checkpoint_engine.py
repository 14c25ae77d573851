"""The trainer's checkpoints in the real vLLM engine (CPU): loaded at start and swapped in place.

The trainer's model here has *tied* embeddings, the case where an in-place reload used to leave the
engine's packed LM head stale (STACK.md): its checkpoints are written untied, so a plain
`reload_weights` must give the log-probs transformers computes on the same folder.
"""

import pytest
from transformers import AutoTokenizer

from dartflow.tasks.models.agreement import chat_prompt_ids, policy_token_logprobs, vllm_engine, vllm_token_logprobs
from dartflow.tasks.training.checkpoints import load_policy
from dartflow.tasks.training.settings import TrainerSettings
from dartflow.tasks.training.trainer import Trainer

from training_helpers import multi_turn_records, table

pytestmark = pytest.mark.slow

LOGPROB_TOLERANCE = 1e-4  # transformers vs vLLM CPU float32 on tiny models: ~5e-7 measured


def max_gap(a, b) -> float:
    return max(abs(x - y) for x, y in zip(a, b))


def test_checkpoints_load_in_vllm_and_swap_in_place_with_transformers_log_probs(tiny_tied_model_dir, tmp_path):
    trainer = Trainer(tiny_tied_model_dir, checkpoint_root=tmp_path, settings=TrainerSettings(lr=1e-2, batch_size=4, micro_batch_size=4))
    first = trainer.save_checkpoint()
    tokenizer = AutoTokenizer.from_pretrained(first)
    sequence = chat_prompt_ids(tokenizer, "Guess the number between 1 and 100.") + tokenizer.encode("My guess is 50.<|im_end|>")

    with vllm_engine(first) as llm:
        engine_first = vllm_token_logprobs(llm, sequence)
        assert max_gap(engine_first, policy_token_logprobs(load_policy(first), sequence)) <= LOGPROB_TOLERANCE
        assert max_gap(engine_first, policy_token_logprobs(trainer.policy, sequence)) <= LOGPROB_TOLERANCE

        for seed in range(3):
            batch = table(multi_turn_records(groups=1, group_size=4, vocab_size=1024, seed=seed))
            assert not trainer.train_step(batch).skipped
        later = trainer.save_checkpoint()
        llm.collective_rpc("reload_weights", kwargs={"weights_path": str(later), "is_checkpoint_format": True})
        llm.reset_prefix_cache()
        engine_later = vllm_token_logprobs(llm, sequence)

    expected_later = policy_token_logprobs(load_policy(later), sequence)
    print(f"engine vs transformers after the swap: {max_gap(engine_later, expected_later):.2e}")
    assert max_gap(engine_later, expected_later) <= LOGPROB_TOLERANCE
    assert max_gap(engine_later, engine_first) > 100 * LOGPROB_TOLERANCE  # the weights did change
