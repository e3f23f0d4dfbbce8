"""A stage rerun with fewer steps than its run already trained is refused with a message, before Ray Train
starts (it would resume from the later checkpoint, stop at once and leave the stage without its step)."""

from __future__ import annotations

import pytest

from mm1.errors import UserFacingError
from mm1.train.launch import check_resumable


def test_a_rerun_with_fewer_steps_than_the_run_trained_is_refused(tmp_path):
    for step in (100, 200):
        (tmp_path / "base-abc" / f"checkpoint_{step:06d}" / "model").mkdir(parents=True)
    with pytest.raises(UserFacingError) as caught:
        check_resumable(str(tmp_path), "base-abc", "pretrain", 100)
    message = str(caught.value)
    assert "pretrain.steps is 100" in message and "step 200" in message
    assert "pretrain.steps to 200 or more" in caught.value.hint and "storage.root" in caught.value.hint


@pytest.mark.parametrize("steps", [200, 300])
def test_a_run_at_or_below_its_steps_resumes(tmp_path, steps):
    (tmp_path / "base-abc" / "checkpoint_000200" / "model").mkdir(parents=True)
    check_resumable(str(tmp_path), "base-abc", "pretrain", steps)  # same or more steps: resume
    check_resumable(str(tmp_path), "fresh-run", "pretrain", 10)  # nothing trained yet
