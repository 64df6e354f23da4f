"""Learning-rate schedules: the factor the base learning rate is multiplied by at each optimisation step.

``constant``
    1 at every step (what mtl_search did before schedules existed).
``cosine``
    a linear warm-up from 0 over the first :data:`WARMUP_SHARE` of the trial's planned steps,
    then half a cosine down to 0 at the last planned step (Loshchilov and Hutter, "SGDR", 2017;
    the warm-up as in Goyal et al., 2017).
``linear``
    the same warm-up, then a straight line down to 0 (the decay RealMLP, Holzmüller et al. 2024,
    and most transformer recipes use).

The planned steps are ``epochs x steps per epoch``: a trial ASHA stops early stops with its
learning rate still high, as it would with any schedule. Plain Python, no torch: the spec's
validation reads :data:`SCHEDULES`, and :mod:`mtl_search.step` hands :func:`lr_factor` to
``torch.optim.lr_scheduler.LambdaLR``.
"""

from __future__ import annotations

import math

#: The share of a trial's planned steps spent warming up (``cosine`` and ``linear``).
WARMUP_SHARE = 0.05


def _constant(progress: float) -> float:
    return 1.0


def _cosine(progress: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _linear(progress: float) -> float:
    return 1.0 - progress


#: Schedule name -> its decay after the warm-up, as a function of progress through it (0 -> 1).
SCHEDULES = {"constant": _constant, "cosine": _cosine, "linear": _linear}


def lr_factor(schedule: str, step: int, total: int) -> float:
    """The learning-rate multiplier before optimisation step ``step`` (0-based) of ``total`` planned steps.

    Raises:
        ValueError: an unknown schedule (the message lists the valid ones).
    """
    try:
        decay = SCHEDULES[schedule]
    except KeyError:
        raise ValueError(f"unknown lr_schedule {schedule!r}; valid: {', '.join(SCHEDULES)}") from None
    if schedule == "constant":
        return 1.0
    warmup = max(1, round(WARMUP_SHARE * total))
    if step < warmup:
        return (step + 1) / warmup
    return decay(min(1.0, (step - warmup) / max(1, total - warmup)))
