"""Learning-rate schedule: linear warm-up, then constant, linear or cosine decay to a floor.

A pure function of the step count, so the schedule's whole state is one integer that the
checkpoint stores: a resumed run continues on exactly the same curve.
"""

from __future__ import annotations

import math

LR_SCHEDULES = ("constant", "linear", "cosine")


def learning_rate(
    step: int,
    *,
    base_lr: float,
    schedule: str = "constant",
    warmup_steps: int = 0,
    total_steps: int = 0,
    min_lr_ratio: float = 0.0,
) -> float:
    """LR of optimizer step `step` (0-based): base_lr * (step + 1) / warmup_steps while warming
    up; then decays from base_lr at the end of warm-up to base_lr * min_lr_ratio at `total_steps`
    (and stays there)."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown lr schedule {schedule!r}; one of {LR_SCHEDULES}")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "linear":
        decay = 1.0 - progress
    else:
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    return base_lr * (min_lr_ratio + (1.0 - min_lr_ratio) * decay)
