"""Data manager (issue 7): pure curation rules over Arrow tables / polars frames, no I/O inside.

Sampler side (decides what is rolled out; feeds the rollout service's GroupSampler):
- difficulty.py: which attempts count, posterior success, difficulty and bucket per problem.
- budgets.py: rollouts per problem within a round's budget, turn limit per problem.

Trainer side (decides what is trained on):
- groups.py: whole-group batch selection (advantages are computed inside a group).
- selection.py: dynamic sampling (drop equal-reward groups), high-entropy turns, duration weights.

settings.py holds the `curation:` config section; every rule off is the uniform baseline.
"""
