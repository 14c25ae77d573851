"""Behaviour-cloning warm-up on demonstration trajectories of the store's schema."""

import torch

from dartflow.tasks.training.bc import demonstrations
from dartflow.tasks.training.settings import TrainerSettings
from dartflow.tasks.training.trainer import Trainer

from training_helpers import table, trajectory, turn

SETTINGS = TrainerSettings(batch_size=2, micro_batch_size=2, lr=1e-4, bc_lr=3e-3)
PROMPT = [1, 300, 301, 302, 2, 1, 303]  # <|im_start|>user ... <|im_end|><|im_start|>assistant
ACTION = [400, 401, 402, 2]  # the action format the policy should learn, then <|im_end|>


def demonstration_batch():
    demos = [
        trajectory([turn(PROMPT, ACTION), turn(PROMPT + ACTION + [1, 304, 2, 1, 303], ACTION)], source="demonstration"),
        trajectory([turn(PROMPT, [999, 998])], source="rollout"),  # not a demonstration: left out
    ]
    return table(demos)


@torch.no_grad()
def greedy(model, prompt, steps):
    ids = list(prompt)
    for _ in range(steps):
        ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt) :]


def test_demonstrations_selects_the_demonstration_rows():
    assert demonstrations(demonstration_batch())["source"].to_pylist() == ["demonstration"]


def test_a_fresh_policy_learns_the_demonstrated_action_in_a_few_bc_steps(tiny_model_dir, tmp_path):
    trainer = Trainer(tiny_model_dir, checkpoint_root=tmp_path, settings=SETTINGS)
    batch = demonstrations(demonstration_batch())
    assert greedy(trainer.policy, PROMPT, len(ACTION)) != ACTION
    reports = [trainer.bc_step(batch) for _ in range(15)]
    assert reports[-1].metrics["train/bc_nll"] < reports[0].metrics["train/bc_nll"] / 5
    assert reports[0].metrics["train/tokens"] == 2 * len(ACTION)  # prompts and observations are context
    assert reports[0].metrics["train/lr"] == 3e-3
    assert greedy(trainer.policy, PROMPT, len(ACTION)) == ACTION
    assert trainer.version == 15 and trainer.bc_steps == 15 and trainer.rl_steps == 0


@torch.no_grad()
def next_token_probability(model, context, token):
    return float(model(torch.tensor([context])).logits[0, -1].softmax(-1)[token])


def test_a_transcript_bc_step_also_learns_to_predict_the_observations(tiny_model_dir, tmp_path):
    """bc_loss='transcript': every token after the first is a target, the environment's answer included;
    with the default ('replies') the answer stays context."""
    context = PROMPT + ACTION + [1]  # ... <|im_end|><|im_start|>: next comes the observation token 304
    learned = {}
    for bc_loss in ("replies", "transcript"):
        settings = TrainerSettings(batch_size=2, micro_batch_size=2, lr=1e-4, bc_lr=3e-3, bc_loss=bc_loss)
        trainer = Trainer(tiny_model_dir, checkpoint_root=tmp_path / bc_loss, settings=settings)
        batch = demonstrations(demonstration_batch())
        before = next_token_probability(trainer.policy, context, 304)
        reports = [trainer.bc_step(batch) for _ in range(15)]
        learned[bc_loss] = next_token_probability(trainer.policy, context, 304) - before
        assert greedy(trainer.policy, PROMPT, len(ACTION)) == ACTION  # the replies are learned either way
        if bc_loss == "transcript":
            sequence_length = len(PROMPT + ACTION + [1, 304, 2, 1, 303] + ACTION)
            assert reports[0].metrics["train/tokens"] == sequence_length - 1  # all but the first token
    assert learned["transcript"] > 0.2 and learned["replies"] < 0.05
