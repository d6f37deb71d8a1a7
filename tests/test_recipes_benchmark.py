"""``benchmarks/recipes.py``: the unit plan and the gain summary (hand-computed cases)."""

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "recipes.py"
_SPEC = importlib.util.spec_from_file_location("kdcore_recipes_benchmark", _PATH)
recipes = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(recipes)


def test_summary_weighs_each_fold_once_by_the_mean_of_its_seeds():
    units = {"a": {"fold": "a", "gain_points": 4.0},
             "a (seed 1)": {"fold": "a", "gain_points": -2.0},
             "a (seed 2)": {"fold": "a", "gain_points": 1.0},
             "b": {"fold": "b", "gain_points": -3.0}}
    summary = recipes.summarise(units)
    assert summary["n"] == 2 and summary["runs"] == 4
    assert summary["gain_points_per_fold"] == {"a": 1.0, "b": -3.0}
    assert summary["mean_gain_points"] == pytest.approx(-1.0)
    assert summary["std_gain_points"] == pytest.approx(2.83, abs=0.01)  # stdev of (1, -3)
    assert summary["min_gain_points"] == -3.0
    assert summary["min_gain_points_any_run"] == -3.0


def test_summary_of_seeds_without_folds_and_of_nothing():
    summary = recipes.summarise({"0": {"gain_points": 1.5}, "1": {"gain_points": -0.5}})
    assert summary["n"] == 2 and summary["mean_gain_points"] == pytest.approx(0.5)
    empty = recipes.summarise({})
    assert empty["n"] == 0 and empty["mean_gain_points"] is None


def test_plan_runs_every_fold_the_seeds_and_extra_seeds_on_the_first_folds(monkeypatch,
                                                                          tmp_path):
    monkeypatch.setattr(recipes, "FSDD", tmp_path)  # exists: the folds are planned
    planned = recipes.plan(["a", "b", "c"], [0, 1], [1, 2], 2)
    keys = [(section, key) for section, key, _, _ in planned]
    assert sorted(keys) == sorted([
        ("fsdd", "a"), ("fsdd", "b"), ("fsdd", "c"), ("synthetic", "0"), ("synthetic", "1"),
        ("fsdd", "a (seed 1)"), ("fsdd", "a (seed 2)"), ("fsdd", "b (seed 1)"),
        ("fsdd", "b (seed 2)")])
    assert ("fsdd", "b (seed 2)", "b", 2) in planned
    assert keys[:2] == [("fsdd", "a"), ("fsdd", "b")]  # seed-0 folds come first
    monkeypatch.setattr(recipes, "FSDD", tmp_path / "absent")
    assert [u[0] for u in recipes.plan(["a"], [0], [1], 1)] == ["synthetic"]
