"""What each CLI command does: thin calls into tasks/ and storage/."""

from __future__ import annotations

import argparse

from dartflow.config import RunConfig, load_config


def load(args: argparse.Namespace) -> RunConfig:
    return load_config(args.config, args.overrides)
