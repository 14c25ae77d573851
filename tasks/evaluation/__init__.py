"""Held-out evaluation of a checkpoint (issue 6)."""
