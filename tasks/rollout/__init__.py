"""Rollout service: vLLM engine wrapper, multi-turn episode loop, weight sync (issue 4)."""
