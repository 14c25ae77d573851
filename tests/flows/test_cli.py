import subprocess
import sys
from pathlib import Path

import pytest

from dartflow.flows.cli import build_parser, main

REPO = Path(__file__).resolve().parents[2]
DARTFLOW = Path(sys.executable).parent / "dartflow"


def _subcommand_paths(parser, prefix=()):
    """Every command path of the CLI, e.g. ('model', 'tiny')."""
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                yield prefix + (name,)
                yield from _subcommand_paths(sub, prefix + (name,))


def test_every_subcommand_has_help(capsys):
    paths = list(_subcommand_paths(build_parser()))
    assert ("model", "tiny") in paths and ("model", "smollm2") in paths and ("quickstart",) in paths
    for path in paths:
        with pytest.raises(SystemExit) as info:
            main([*path, "--help"])
        assert info.value.code == 0
        assert "usage: dartflow " + " ".join(path) in capsys.readouterr().out


def test_console_script_is_installed_and_answers_help():
    result = subprocess.run([str(DARTFLOW), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "quickstart" in result.stdout


def test_bad_config_exits_2_with_field_path(capsys):
    code = main(["config", "check", str(REPO / "configs/quickstart.yaml"), "training.lr=-1"])
    assert code == 2
    assert "training.lr: Input should be greater than 0" in capsys.readouterr().err


def test_config_show_prints_overrides(capsys):
    assert main(["config", "show", str(REPO / "configs/quickstart.yaml"), "rollout.group_size=7"]) == 0
    assert "group_size: 7" in capsys.readouterr().out
