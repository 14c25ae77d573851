"""Trainer: losses, advantages, the train step, checkpoints (issue 5)."""
