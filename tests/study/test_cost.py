"""The plan of a study: the scheduler's wall time simulated, the calibration, and --plan as a
user runs it (it writes nothing)."""

from __future__ import annotations

import itertools

import pytest

from lmscope.study import cost
from lmscope.study.runner import plan_study
from lmscope.study.schedule import Unit
from tests.study.test_study import write_study
from tests.test_cli import lmscope


def _unit(name, needs=(), inline=False):
    return Unit(name, print, needs=needs, inline=inline)


def test_the_wall_time_is_the_schedulers_list_schedule():
    """One at a time the units' seconds add up; side by side each starts when its needs are done
    and a place is free (worked by hand); a step's own unit takes no place."""
    units = [_unit("a"), _unit("b"), _unit("c", ("a",)), _unit("s", ("a", "b", "c"), True),
             _unit("d", ("s",))]
    seconds = {"a": 10, "b": 5, "c": 3, "d": 1}
    assert cost.wall_seconds(units, seconds, 1) == 19
    assert cost.wall_seconds(units, seconds, 2) == 14  # a | b, then c at 10, s at 13, d 13-14
    assert cost.wall_seconds(units, seconds, 8) == 14
    assert cost.wall_seconds(units, {}, 2) == 0


@pytest.mark.parametrize("jobs", [1, 2, 3, 5])
def test_independent_units_fill_every_place(jobs):
    """n independent units of equal length: ceil(n / jobs) rounds; never less than the longest
    unit nor than the work divided by the places."""
    units = [_unit(f"u{i}") for i in range(7)]
    assert cost.wall_seconds(units, {u.name: 3.0 for u in units}, jobs) == 3.0 * -(-7 // jobs)
    lengths = dict(zip((u.name for u in units), itertools.cycle([1.0, 4.0, 2.0])))
    wall = cost.wall_seconds(units, lengths, jobs)
    assert wall >= max(lengths.values()) and wall >= sum(lengths.values()) / jobs - 1e-9
    assert wall <= sum(lengths.values())


def test_the_plan_of_a_study_estimates_its_trainings_and_pairs_and_writes_nothing(tmp_path):
    study = write_study(tmp_path)
    out = tmp_path / "out"
    plan = plan_study(study, out, jobs=2)
    names = [u.name for u in plan.units]
    assert names[:4] == ["stats", "train play", "train sums", "train"]
    # without GPUs the two workers start once each, with the first two units they take
    assert plan.process_start > 0
    for name in ("train play", "train sums"):
        assert plan.seconds[name] > plan.process_start, name
    for name in ("transfer play-to-sums", "transfer sums-to-play"):
        assert 0 < plan.seconds[name] < plan.seconds["train play"] - plan.process_start, name
    assert plan.seconds.get("softmax play") is None  # probes: not estimated, and said so
    (size, measured), = plan.calibrations.items()
    assert size == "gpt 2x32, context 32, batch 8" and 0 < measured.evaluate < measured.train
    table = plan.table()
    assert "train play" in table and "6 probe units not estimated" in table
    assert f"about {plan.wall:,.0f} s at --jobs 2" in table
    assert plan.wall < sum(s for s in plan.seconds.values() if s)  # two places: less than all
    assert not out.exists()
    r = lmscope("study", study, "--out", out, "--plan", "--jobs", "1")
    assert r.returncode == 0, r.stderr
    assert "training and transfer:" in r.stdout and "at --jobs 1" in r.stdout
    assert "to start a unit's process" not in r.stdout  # one at a time: in the study's process
    assert not out.exists()
