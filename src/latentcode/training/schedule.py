"""The learning-rate schedule of a run, and the step count a wall-clock budget buys.

[`RunSchedule`] is the run's learning rate at each optimiser step: a linear warm-up, then
constant, linear or cosine decay to 0 at `total_steps` (the formulas of transformers'
`get_scheduler`). Its checkpointed state is the step and, for a time-budgeted run, the fitted
`total_steps`; the peak learning rate and the shape are this run's settings, so a resume may
change them (logged) without touching any private scheduler state.

[`TimeBudget`] fits `total_steps` to `--max_train_time`: it ignores the first steps (start-up,
allocation), measures the next ones (at least 20, over at least 5 % of the budget), and sets
`total_steps = steps so far + remaining time / mean step time`. Until then the schedule runs as if it
were endless (warm-up, then the peak rate). The machine's speed changes under a long run (another
job starts or ends beside it), so the count is fitted again after every further 5 % of the budget,
from the mean step time since the last fit; each fit keeps the decay's progress where it is, so the
learning rate never jumps, and the run stops at the budget whatever the fits said. The fitted
values are saved with the run: a resumed run follows the same schedule up to the next fit, and, given
the same step times, the identical one.
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

    The decay's progress runs from 0 at the end of the warm-up to 1 at `total_steps`. A re-fit of
    `total_steps` ([`RunSchedule.refit`]) keeps the progress reached at that step (the anchor) and
    spreads the rest over the new remaining steps.

    Args:
        kind: one of `LR_SCHEDULERS`.
        learning_rate: the peak learning rate.
        warmup_steps: linear warm-up from 0 (`"constant"` has none).
        total_steps: where linear and cosine reach 0; `None` until a time budget fits it.
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
        self.anchor_step, self.anchor_progress = self.warmup_steps, 0.0

    def progress(self, step: int) -> float:
        """The decay's progress at `step`: 0 until the warm-up ends (and while `total_steps` is
        unknown), 1 from `total_steps` on."""
        if self.total_steps is None:
            return 0.0
        if step >= self.total_steps:
            return 1.0
        if step <= self.anchor_step:
            return self.anchor_progress
        span = self.total_steps - self.anchor_step
        return self.anchor_progress + (1.0 - self.anchor_progress) * (step - self.anchor_step) / span

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return step / max(1, self.warmup_steps)
        if self.kind in ("constant", "constant_with_warmup") or self.total_steps is None:
            return 1.0
        progress = self.progress(step)
        if self.kind == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress)) if progress < 1.0 else 0.0

    def refit(self, total_steps: int) -> None:
        """End the schedule at `total_steps` from now on (at least the current step): the progress
        reached so far is kept and the rest spread over the remaining steps."""
        step = self.step_count
        if self.total_steps is not None and step > self.anchor_step:
            self.anchor_step, self.anchor_progress = step, self.progress(step)
        elif step > self.anchor_step:  # the first fit, after the warm-up: the decay starts here
            self.anchor_step = step
        self.total_steps, self.fitted = max(step, total_steps), True

    def lr(self) -> float:
        """The learning rate of the next optimiser step."""
        return self.learning_rate * self.factor(self.step_count)

    def step(self) -> None:
        self.step_count += 1

    def state_dict(self) -> dict:
        return {
            "step_count": self.step_count,
            "total_steps": self.total_steps,
            "fitted": self.fitted,
            "anchor_step": self.anchor_step,
            "anchor_progress": self.anchor_progress,
        }

    def load_state_dict(self, state: dict) -> None:
        self.step_count = state["step_count"]
        if state["fitted"]:  # a time budget's schedule is the run's own: a resume keeps it
            self.total_steps, self.fitted = state["total_steps"], True
            # checkpoints written before re-fits existed decay from the end of the warm-up
            self.anchor_step = state.get("anchor_step", self.warmup_steps)
            self.anchor_progress = state.get("anchor_progress", 0.0)


class TimeBudget:
    """Fits a [`RunSchedule`]'s `total_steps` to `seconds` of training time, and fits it again as
    the step time changes.

    Args:
        seconds: the training time of the whole run (all sessions together).
        ignored_steps: first steps of a session not measured (start-up costs).
        measured_steps, measure_fraction: the steps measured before the first fit are at least
            `measured_steps` and span at least `measure_fraction` of the budget; slow steps stop at
            3 once they span twice that fraction. A fixed window of a few fast steps would fit the
            count to whatever the machine did in those seconds (another process still starting
            beside the run, say).
        refit_fraction: after the first fit, the count is fitted again each time this fraction of
            the budget has passed, from the mean step time since the previous fit: a run whose
            machine speeds up or slows down still ends at its budget, not 10 % before or after it.
    """

    def __init__(
        self,
        seconds: float,
        ignored_steps: int = 5,
        measured_steps: int = 20,
        measure_fraction: float = 0.05,
        refit_fraction: float = 0.05,
    ):
        self.seconds = seconds
        self.ignored_steps, self.measured_steps, self.measure_fraction = ignored_steps, measured_steps, measure_fraction
        self.refit_fraction = refit_fraction
        self.step_times: list[float] = []
        self.session_steps = 0
        # (step, elapsed seconds) of the last fit: the start of the window the next fit measures
        self.fit_step: int | None = None
        self.fit_seconds = 0.0

    def state_dict(self) -> dict:
        return {"fit_step": self.fit_step, "fit_seconds": self.fit_seconds}

    def load_state_dict(self, state: dict) -> None:
        self.fit_step, self.fit_seconds = state["fit_step"], state["fit_seconds"]

    def observe(self, schedule: RunSchedule, step_seconds: float, elapsed: float) -> None:
        """Record one step (`step_seconds` long; `elapsed`: training seconds of the run so far) and
        fit the schedule's `total_steps` when it is due."""
        self.session_steps += 1
        if elapsed >= self.seconds:  # the budget is spent: this step is the last
            if not schedule.fitted:
                logger.warning(
                    "max_train_time=%gs spent after %d steps, before the step time was measured: the run stops "
                    "here (%.1f s per step; a smaller model or batch takes more steps in this budget)",
                    self.seconds,
                    schedule.step_count,
                    elapsed / max(1, self.session_steps),
                )
            if schedule.total_steps is None or schedule.total_steps > schedule.step_count:
                schedule.refit(schedule.step_count)
            return
        if schedule.fitted:
            if self.fit_step is None:  # resumed from a checkpoint that has no window: start one here
                self.fit_step, self.fit_seconds = schedule.step_count, elapsed
            elif (
                elapsed - self.fit_seconds >= self.refit_fraction * self.seconds and schedule.step_count > self.fit_step
            ):
                self._fit(schedule, (elapsed - self.fit_seconds) / (schedule.step_count - self.fit_step), elapsed)
            return
        # Start-up steps are not measured, unless they already take a noticeable part of the budget.
        if self.session_steps <= self.ignored_steps and elapsed < self.measure_fraction * self.seconds:
            return
        self.step_times.append(step_seconds)
        measured, spent, fraction = len(self.step_times), sum(self.step_times), self.measure_fraction * self.seconds
        enough = spent >= fraction and (measured >= self.measured_steps or (measured >= 3 and spent >= 2 * fraction))
        if enough:
            self._fit(schedule, spent / measured, elapsed)
            logger.info(
                "max_train_time=%gs: %.3f s per step measured over %d steps -> %d steps in all",
                self.seconds,
                spent / measured,
                measured,
                schedule.total_steps,
            )

    def _fit(self, schedule: RunSchedule, step_seconds: float, elapsed: float) -> None:
        """`total_steps` = the steps so far + the whole steps of `step_seconds` left in the budget."""
        total = schedule.step_count + max(0, math.floor((self.seconds - elapsed) / step_seconds))
        if schedule.fitted and total != schedule.total_steps:
            logger.info(
                "max_train_time=%gs: %.3f s per step since step %d -> %d steps in all (was %d)",
                self.seconds,
                step_seconds,
                self.fit_step,
                total,
                schedule.total_steps,
            )
        schedule.refit(total)
        self.fit_step, self.fit_seconds = schedule.step_count, elapsed


def run_schedule(options) -> tuple[RunSchedule, TimeBudget | None]:
    """The learning-rate schedule and the time budget (None without one) that a config's
    `optimization` options describe; under a budget the step count is unknown until it is fitted."""
    total = None if options.max_train_time else options.max_train_steps
    schedule = RunSchedule(options.lr_scheduler, options.learning_rate, options.lr_warmup_steps, total)
    return schedule, TimeBudget(options.max_train_time) if options.max_train_time else None
