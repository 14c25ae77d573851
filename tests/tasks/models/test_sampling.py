import torch

from dartflow.tasks.models.agreement import load_transformers_policy, policy_token_logprobs
from dartflow.tasks.models.sampling import sample_response


def test_sampled_logprobs_equal_a_full_forward_of_the_sequence(tiny_model_dir):
    model = load_transformers_policy(tiny_model_dir)
    prompt = [1, 50, 60, 70, 2, 1, 80]
    sampled = sample_response(
        model, prompt, max_new_tokens=12, stop_token_ids=[2], generator=torch.Generator().manual_seed(3)
    )
    assert 1 <= len(sampled.token_ids) <= 12
    full = policy_token_logprobs(model, prompt + sampled.token_ids)  # position t: log p(x_t | x_<t)
    recomputed = full[len(prompt) - 1 :]
    assert torch.allclose(torch.tensor(sampled.behavior_logprobs), torch.tensor(recomputed), atol=1e-5)
    assert sampled.finished == (sampled.token_ids[-1] == 2)


def test_sampling_is_reproducible_with_a_seeded_generator(tiny_model_dir):
    model = load_transformers_policy(tiny_model_dir)
    runs = [
        sample_response(model, [1, 5, 9], max_new_tokens=8, stop_token_ids=[], generator=torch.Generator().manual_seed(7))
        for _ in range(2)
    ]
    assert runs[0].token_ids == runs[1].token_ids
    assert runs[0].finished is False and len(runs[0].token_ids) == 8
