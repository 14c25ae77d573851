"""What a person watching `dartflow train` sees: a progress bar on a terminal, one line per step in a log.

On a terminal (stdout is a TTY) a tqdm bar counts RL steps towards the run's target and shows the
policy version, the batch reward, the latest held-out success, the rollout throughput (sampled tokens/s
over the run) and the trainer's (tokens through forward+backward per second of its latest step); messages
(evaluations, warnings) print above it. Anywhere else (CI logs, a file, a test's pipe) each step is
one grep-able line with the same numbers, e.g.
    [v  61 | step 1/30] reward 0.562  heldout 0.50  staleness 0.0  rollout 268 tok/s  trainer 120 tok/s  44s
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def step_line(version: int, step: int, steps: int, metrics: dict[str, float], heldout: float | None, elapsed_s: float) -> str:
    """The one-line summary of a training step."""
    shown = f"{heldout:.2f}" if heldout is not None else "  - "
    return (
        f"[v{version:>4} | step {step}/{steps}] "
        f"reward {metrics.get('train/reward_mean', 0.0):.3f}  heldout {shown}  "
        f"staleness {metrics.get('train/staleness_mean', 0.0):.1f}  "
        f"rollout {metrics.get('rollout/tokens_per_s', 0.0):,.0f} tok/s  "
        f"trainer {metrics.get('train/input_tokens_per_s', 0.0):,.0f} tok/s  {elapsed_s:,.0f}s"
    )


def bar_postfix(version: int, metrics: dict[str, float], heldout: float | None) -> str:
    shown = f"{heldout:.2f}" if heldout is not None else "-"
    return (
        f"v{version} reward {metrics.get('train/reward_mean', 0.0):.2f} heldout {shown} "
        f"{metrics.get('rollout/tokens_per_s', 0.0):,.0f} tok/s trainer {metrics.get('train/input_tokens_per_s', 0.0):,.0f} tok/s"
    )


class TrainProgress:
    """Progress of the RL steps of one run (`done` of `steps` already done when it starts: a resume)."""

    def __init__(self, steps: int, done: int = 0, *, stream: TextIO | None = None, started: float | None = None):
        self.steps, self.stream = steps, stream if stream is not None else sys.stdout
        self.started = started if started is not None else time.time()
        self.heldout: float | None = None
        self._bar = None
        if self.stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(
                total=steps, initial=done, desc="training", unit="step", file=self.stream, dynamic_ncols=True,
                bar_format="{desc}: {n}/{total} {bar} [{elapsed}<{remaining}] {postfix}",
            )

    def message(self, text: str) -> None:
        """A line above the bar (or just a line)."""
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def evaluated(self, version: int, success: float) -> None:
        self.heldout = success
        self.message(f"held-out success at version {version}: {success:.3f}")

    def step(self, version: int, step: int, metrics: dict[str, float]) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(bar_postfix(version, metrics, self.heldout), refresh=False)
            self._bar.update(step - self._bar.n)
        else:
            line = step_line(version, step, self.steps, metrics, self.heldout, time.time() - self.started)
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
