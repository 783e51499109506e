"""The benchmarks' shared statistics, cache and command-line rules."""

import argparse

import hypothesis
import hypothesis.strategies as st
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks._common import cache, stats
from benchmarks._common import report as rep


def test_bootstrap_interval_brackets_the_statistic_and_is_reproducible():
  xs = np.random.default_rng(1).normal(3.0, 1.0, 20)
  lo, hi = stats.bootstrap(xs)
  assert lo < xs.mean() < hi
  assert stats.bootstrap(xs) == (lo, hi)
  s = stats.summary(xs)
  assert s["n"] == 20 and s["median_ci"][0] <= s["median"] <= s["median_ci"][1]
  assert np.isnan(stats.bootstrap([1.0])).all()


@pytest.mark.parametrize(
  "shift, higher, verdict",
  [
    (1.0, True, "wins"),
    (-1.0, True, "loses"),
    (1.0, False, "loses"),
    (-1.0, False, "wins"),
    (0.0, True, "ties"),
  ],
)
def test_paired_verdicts(shift, higher, verdict):
  rng = np.random.default_rng(0)
  y = rng.normal(size=12)
  x = (
    y + shift + 0.01 * rng.normal(size=12)
    if shift
    else y + 0.5 * rng.normal(size=12)
  )
  out = stats.paired(x, y, higher_is_better=higher)
  assert out["verdict"] == verdict
  assert out["n"] == 12


def test_paired_rejects_unaligned_seeds():
  with pytest.raises(ValueError, match="one value per seed"):
    stats.paired([1.0, 2.0], [1.0], True)


def test_gap_to_a_linear_front():
  front = np.array([[0.0, 1.0], [1.0, 0.0]])  # old, new; both maximised
  gap, where = stats.gap_to_front(np.array([0.5, 0.7]), front)
  assert where == "inside" and gap == pytest.approx(0.2)
  gap, _ = stats.gap_to_front(np.array([0.5, 0.3]), front)
  assert gap == pytest.approx(-0.2)
  # Dominated points of the front are ignored.
  front = np.vstack([front, [[-0.1, 0.5]]])
  assert stats.gap_to_front(np.array([0.5, 0.7]), front)[0] == pytest.approx(
    0.2
  )
  assert stats.gap_to_front(np.array([1.2, 0.1]), front)[1] == "more retentive"


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(
  st.lists(
    st.tuples(
      st.sampled_from([0.0, 0.5, 1.0, 2.0, np.nan]),
      st.sampled_from([0.0, 0.5, 1.0, 2.0, np.inf]),
    ),
    max_size=12,
  )
)
def test_pareto_is_the_non_dominated_points_by_definition(rows):
  points = np.array(rows, np.float64).reshape(-1, 2)
  finite = [p for p in points if np.isfinite(p).all()]
  want = {
    tuple(p)
    for p in finite
    if not any((q >= p).all() and (q > p).any() for q in finite)
  }
  got = stats.pareto(points)
  assert {tuple(p) for p in got} == want and len(got) == len(want)
  assert (np.diff(got[:, 0]) > 0).all()  # sorted by the old-task value


def test_front_verdict_beyond_behind_and_on():
  rng = np.random.default_rng(0)
  noise = lambda: 0.01 * rng.normal(size=8)
  rivals = [(0.0 + noise(), 1.0 + noise()), (1.0 + noise(), 0.0 + noise())]
  beyond = stats.front_verdict((0.5 + noise(), 0.8 + noise()), rivals, True)
  behind = stats.front_verdict((0.5 + noise(), 0.2 + noise()), rivals, True)
  on = stats.front_verdict((0.5 + noise(), 0.5 + noise()), rivals, True)
  assert (beyond["verdict"], behind["verdict"], on["verdict"]) == (
    "beyond",
    "behind",
    "on",
  )
  # An error metric (lower is better): the same geometry mirrored.
  mirrored = [(-o, -n) for o, n in rivals]
  out = stats.front_verdict((-0.5 + noise(), -0.8 + noise()), mirrored, False)
  assert out["verdict"] == "beyond" and out["gap"] > 0


def test_cache_round_trip_and_stale_shapes(tmp_path, monkeypatch):
  monkeypatch.setattr(cache, "CACHE", tmp_path)
  calls = []

  def build():
    calls.append(1)
    return {"w": jnp.arange(3.0)}

  template = {"w": jnp.zeros(3)}
  first = cache.cached("t", {"a": 1}, template, build)
  second = cache.cached("t", {"a": 1}, template, build)
  assert len(calls) == 1 and (first["w"] == second["w"]).all()
  cache.cached("t", {"a": 2}, template, build)  # other settings: rebuilt
  assert len(calls) == 2
  cache.cached("t", {"a": 1}, {"w": jnp.zeros(4)}, lambda: {"w": jnp.zeros(4)})
  assert len(list(tmp_path.glob("t-*.npz"))) == 2


def test_quick_runs_never_write_into_results():
  parser = argparse.ArgumentParser()
  rep.add_arguments(parser, seeds=5)
  args = rep.parse_args(parser, ["--quick"], seeds=5)
  assert args.out == rep.OUT and args.seeds == 2
  with pytest.raises(SystemExit):
    rep.parse_args(parser, ["--quick", "--out", str(rep.RESULTS)], seeds=5)
  with pytest.raises(SystemExit):
    rep.parse_args(parser, ["--seeds", "0"], seeds=5)
  assert rep.parse_args(parser, [], seeds=5).out == rep.RESULTS
