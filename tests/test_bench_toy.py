"""The toy benchmark runs end to end in its quick mode, and its records
carry what the reports and fronts need."""

import json

import pytest

from benchmarks.toy import __main__ as toy_cli
from benchmarks.toy import run, task


@pytest.fixture(scope="module")
def toy_quick(tmp_path_factory):
  out = tmp_path_factory.mktemp("toy")
  records = toy_cli.main(
    ["--quick", "--no-cache", "--no-progress", "--out", str(out)]
  )
  return out, records


def test_records_are_written_with_their_command_and_versions(toy_quick):
  out, records = toy_quick
  payload = json.loads((out / "toy_quick.json").read_text())
  assert payload["records"] == records
  assert payload["meta"]["command"].startswith(
    "python -m benchmarks.toy --quick"
  )
  assert {"jax", "optax", "numpy", "cpu_count"} <= payload["meta"][
    "machine"
  ].keys()


def test_both_protocols_every_front_and_the_curvature(toy_quick):
  _, records = toy_quick
  assert {r["protocol"] for r in records} == {"calibrated", "unconverged"}
  for proto in ("calibrated", "unconverged"):
    for seed in (0, 1):
      knobs = {}
      for r in records:
        if (
          r["protocol"] == proto
          and r["seed"] == seed
          and r.get("front") not in (None, "pretrained")
        ):
          knobs.setdefault(r["front"], set()).add(r["knob"])
          assert r["knob_name"] and r["metric"] in ("mse_old", "mse_new")
      # Every family has at least 4 knob values (Table 1's among them).
      for front in ("full", "wise-ft", "profit-ratio"):
        assert len(knobs[front]) >= 4, front
      assert knobs["profit-nref"] == {2.0, 3.0, 5.0}
      (lam,) = [
        r["value"]
        for r in records
        if r["protocol"] == proto
        and r["seed"] == seed
        and r["metric"] == "lambda_max"
      ]
      assert lam > 0
  profit = [
    r for r in records if r["method"] == "profit" and r["metric"] == "mse_new"
  ]
  assert all(isinstance(r["ref_stable"], bool) for r in profit)


def test_wise_ft_ends_are_the_pretrained_and_the_fine_tuned_model(toy_quick):
  _, records = toy_quick
  at = lambda method, front: {
    (r["protocol"], r["seed"], r["metric"]): r["value"]
    for r in records
    if r["method"] == method and r.get("front") == front
  }
  assert at("wise-ft0", "wise-ft") == pytest.approx(
    at("pretrained", "pretrained"), rel=1e-5
  )
  assert at("wise-ft1", "wise-ft") == pytest.approx(
    at("full", "full"), rel=1e-5
  )


def test_report_and_figures(toy_quick):
  out, _ = toy_quick
  md = (out / "toy_quick.md").read_text()
  for section in (
    "Table 1",
    "paired by seed",
    "beyond its rivals",
    "curvature",
  ):
    assert section in md
  for png in (
    "toy_quick.png",
    "toy_quick_fronts.png",
    "toy_quick_divergence.png",
  ):
    assert (out / png).stat().st_size > 10_000
  # The report re-renders from the committed records alone.
  toy_cli.main(["--from-json", str(out / "toy_quick.json"), "--out", str(out)])
  assert (out / "toy_quick.md").read_text() == md


def test_calibration_quick(tmp_path):
  records = toy_cli.main(
    [
      "--calibrate",
      "--quick",
      "--no-cache",
      "--no-progress",
      "--seeds",
      "2",
      "--out",
      str(tmp_path),
    ]
  )
  cells = run.cells(records)
  # 3 batch sizes x 2 schedules, then the other decay at the chosen cell.
  assert len(cells) == 7
  assert all(len(m["mse_old"]) == 2 for m in cells.values())
  md = (tmp_path / "toy_calibration_quick.md").read_text()
  assert "(chosen)" in md and "paper's baseline row" in md
  assert (tmp_path / "toy_calibration_quick.png").stat().st_size > 10_000


def test_protocol_rejects_unknown_schedule():
  with pytest.raises(ValueError, match="schedule"):
    task.Protocol(batch=32, schedule="linear").optimizer()
