"""Trainer: losses, advantages, the train step, checkpoints (issue 5).

advantages.py  group advantages (grpo, grpo_no_std, rloo) and the zero-signal group fraction
losses.py      decoupled PPO with truncated importance weights, KL, entropy, BC loss
batching.py    Arrow batch -> right-padded tensors with loss masks (multi-turn credit)
turns.py       high-entropy step selection: per-turn entropies, which turns train (issue 7)
logprobs.py    the policy's log-probs/entropy at the agent tokens
step.py        one optimizer step: accumulation, clipping, AdamW, skip when non-finite
bc.py          behaviour-cloning step on demonstrations
schedule.py    learning-rate schedule
settings.py    TrainerSettings (TrainingConfig + knobs it does not hold yet)
checkpoints.py untied HF checkpoint folders + resumable trainer state, retention
trainer.py     Trainer: the API the flow calls
"""
