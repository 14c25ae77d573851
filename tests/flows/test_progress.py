"""The train progress display: a bar on a terminal, grep-able lines elsewhere."""

import io

from dartflow.flows.progress import TrainProgress, bar_postfix, step_line

METRICS = {"train/reward_mean": 0.5625, "train/staleness_mean": 1.5, "rollout/tokens_per_s": 1234.4, "train/input_tokens_per_s": 98.6}


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_step_line_shows_version_step_reward_heldout_and_throughput():
    line = step_line(61, 1, 30, METRICS, 0.5, 44.2)
    assert line == "[v  61 | step 1/30] reward 0.562  heldout 0.50  staleness 1.5  rollout 1,234 tok/s  trainer 99 tok/s  44s"
    assert "heldout   - " in step_line(61, 1, 30, METRICS, None, 0)


def test_a_log_gets_one_line_per_step_and_per_evaluation():
    stream = io.StringIO()
    progress = TrainProgress(30, stream=stream, started=0.0)
    progress.evaluated(60, 0.25)
    progress.step(61, 1, METRICS)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "held-out success at version 60: 0.250"
    assert lines[1].startswith("[v  61 | step 1/30] reward 0.562  heldout 0.25")


def test_a_terminal_gets_a_bar_with_the_numbers_and_messages_above_it():
    stream = Terminal()
    progress = TrainProgress(30, done=10, stream=stream)  # a resumed run starts at its steps done
    progress.evaluated(70, 0.75)
    progress.step(71, 11, METRICS)
    progress.close()
    shown = stream.getvalue()
    assert "held-out success at version 70: 0.750" in shown
    assert "training: 11/30" in shown
    assert bar_postfix(71, METRICS, 0.75) in shown
    assert bar_postfix(71, METRICS, 0.75) == "v71 reward 0.56 heldout 0.75 1,234 tok/s trainer 99 tok/s"
    assert "[v  71 | step" not in shown  # no log lines on a terminal
