"""Learning-rate schedules: warm-up, decay, and the names the spec accepts."""

from __future__ import annotations

import pytest

from mtl_search.errors import SpecError
from mtl_search.schedule import SCHEDULES, WARMUP_SHARE, lr_factor
from mtl_search.spec_file import spec_from_dict


def test_constant_is_one_everywhere():
    assert {lr_factor("constant", step, 100) for step in range(100)} == {1.0}


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_decaying_schedules_warm_up_then_fall_to_zero(schedule: str):
    total = 400
    factors = [lr_factor(schedule, step, total) for step in range(total)]
    warmup = round(WARMUP_SHARE * total)
    assert factors[:warmup] == pytest.approx([(step + 1) / warmup for step in range(warmup)])
    assert factors[warmup] == pytest.approx(1.0)
    after = factors[warmup:]
    assert all(a >= b for a, b in zip(after, after[1:], strict=False))  # never rises again
    assert after[-1] < 0.01 and after[len(after) // 2] == pytest.approx(0.5, abs=0.01)


def test_an_unknown_schedule_names_the_valid_ones():
    with pytest.raises(ValueError, match="unknown lr_schedule 'step'; valid: constant, cosine, linear"):
        lr_factor("step", 0, 10)


def test_the_spec_rejects_an_unknown_schedule_with_its_path():
    assert set(SCHEDULES) == {"constant", "cosine", "linear"}
    with pytest.raises(SpecError, match=r"space\.lr_schedule.*valid: constant, cosine, linear"):
        spec_from_dict({"name": "t", "data": {"source": "builtin:planted"}, "space": {"lr_schedule": "step"}})
