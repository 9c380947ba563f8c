"""The learning-rate schedule of a run, and the step count a wall-clock budget buys.

[`RunSchedule`] is the run's learning rate at each optimiser step: a linear warm-up, then
constant, linear or cosine decay to 0 at `total_steps` (the formulas of transformers'
`get_scheduler`). Its checkpointed state is the step and, for a time-budgeted run, the fitted
`total_steps`; the peak learning rate and the shape are this run's settings, so a resume may
change them (logged) without touching any private scheduler state.

[`TimeBudget`] fits `total_steps` to `--max_train_time`: it ignores the first steps (start-up,
allocation), measures the next ones (at least 20, over at least 5 % of the budget), and fixes `total_steps = steps so far
+ remaining time / mean step time` once. Until then the schedule runs as if it were endless (warm-up, then the
peak rate), and the fixed value is saved so that a resumed run follows the identical schedule.
"""

from __future__ import annotations

import logging
import math
import re

logger = logging.getLogger(__name__)

LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600}


def parse_duration(text: str | float | int | None) -> float | None:
    """Seconds of `text`: a number of seconds, or `"90s"`, `"15m"`, `"2h"`; `None` stays `None`."""
    if text is None or isinstance(text, (int, float)):
        seconds = text
    else:
        match = _DURATION.match(str(text).lower())
        if match is None:
            raise ValueError(
                f"max_train_time={text!r} is not a duration: give seconds (900) or a number with a unit, "
                "s / m / h (90s, 15m, 2h)"
            )
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds is not None and seconds <= 0:
        raise ValueError(f"max_train_time must be > 0 seconds, got {text!r}")
    return seconds


class RunSchedule:
    """Learning-rate factor per optimiser step; `lr()` = `learning_rate * factor(step)`.

    Args:
        kind: one of `LR_SCHEDULERS`.
        learning_rate: the peak learning rate.
        warmup_steps: linear warm-up from 0 (`"constant"` has none).
        total_steps: where linear and cosine reach 0; `None` until a time budget fixes it.
        fitted: `total_steps` was fitted to a time budget (then it is saved and restored).
    """

    def __init__(
        self, kind: str, learning_rate: float, warmup_steps: int, total_steps: int | None, fitted: bool = False
    ):
        if kind not in LR_SCHEDULERS:
            raise ValueError(f"lr_scheduler must be one of {LR_SCHEDULERS}, got {kind!r}")
        self.kind, self.learning_rate = kind, learning_rate
        self.warmup_steps = 0 if kind == "constant" else warmup_steps
        self.total_steps, self.fitted = total_steps, fitted
        self.step_count = 0

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return step / max(1, self.warmup_steps)
        if self.kind in ("constant", "constant_with_warmup") or self.total_steps is None:
            return 1.0
        span = max(1, self.total_steps - self.warmup_steps)
        if self.kind == "linear":
            return max(0.0, (self.total_steps - step) / span)
        progress = (step - self.warmup_steps) / span
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    def lr(self) -> float:
        """The learning rate of the next optimiser step."""
        return self.learning_rate * self.factor(self.step_count)

    def step(self) -> None:
        self.step_count += 1

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "total_steps": self.total_steps, "fitted": self.fitted}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = state["step_count"]
        if state["fitted"]:  # a time budget's schedule is the run's own: a resume keeps it
            self.total_steps, self.fitted = state["total_steps"], True


class TimeBudget:
    """Fits a [`RunSchedule`]'s `total_steps` to `seconds` of training time.

    Args:
        seconds: the training time of the whole run (all sessions together).
        ignored_steps: first steps of a session not measured (start-up costs).
        measured_steps, measure_fraction: the steps measured before the count is fixed are at
            least `measured_steps` and span at least `measure_fraction` of the budget; slow steps
            stop at 3 once they span twice that fraction. A fixed window of a few fast steps would
            fit the count to whatever the machine did in those seconds (another process still
            starting beside the run, say), and the run would overshoot its budget.
    """

    def __init__(
        self, seconds: float, ignored_steps: int = 5, measured_steps: int = 20, measure_fraction: float = 0.05
    ):
        self.seconds = seconds
        self.ignored_steps, self.measured_steps, self.measure_fraction = ignored_steps, measured_steps, measure_fraction
        self.step_times: list[float] = []
        self.session_steps = 0

    def observe(self, schedule: RunSchedule, step_seconds: float, elapsed: float) -> None:
        """Record one step (`elapsed`: training seconds of the run so far); fix the schedule's
        `total_steps` once enough steps are measured."""
        self.session_steps += 1
        if schedule.fitted:
            return
        if elapsed >= self.seconds:  # steps so slow that the budget ran out before they were measured
            schedule.total_steps, schedule.fitted = schedule.step_count, True
            logger.warning(
                "max_train_time=%gs spent after %d steps, before the step time was measured: the run stops "
                "here (%.1f s per step; a smaller model or batch takes more steps in this budget)",
                self.seconds,
                schedule.step_count,
                elapsed / max(1, self.session_steps),
            )
            return
        # Start-up steps are not measured, unless they already take a noticeable part of the budget.
        if self.session_steps <= self.ignored_steps and elapsed < self.measure_fraction * self.seconds:
            return
        self.step_times.append(step_seconds)
        measured, spent, fraction = len(self.step_times), sum(self.step_times), self.measure_fraction * self.seconds
        enough = spent >= fraction and (measured >= self.measured_steps or (measured >= 3 and spent >= 2 * fraction))
        if not enough and elapsed < self.seconds:
            return
        mean = sum(self.step_times) / len(self.step_times)
        remaining = max(0, math.floor((self.seconds - elapsed) / mean))
        schedule.total_steps, schedule.fitted = schedule.step_count + remaining, True
        logger.info(
            "max_train_time=%gs: %.3f s per step measured over %d steps -> %d steps in all",
            self.seconds,
            mean,
            len(self.step_times),
            schedule.total_steps,
        )
