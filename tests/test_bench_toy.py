"""The toy benchmark runs end to end in its quick mode, and its records
carry what the reports and fronts need."""

import json

import pytest

from benchmarks._common import report as rep
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


@pytest.fixture(scope="module")
def toolkit_quick(tmp_path_factory):
  out = tmp_path_factory.mktemp("toolkit")
  records = toy_cli.main(
    [
      "--quick",
      "--toolkit",
      "--seeds",
      "2",
      "--no-cache",
      "--no-progress",
      "--out",
      str(out),
    ]
  )
  return out, records


def test_toolkit_has_every_front_with_its_knobs(toolkit_quick):
  out, records = toolkit_quick
  assert {r["protocol"] for r in records} == {"calibrated"}
  assert {r["seed"] for r in records} == {0, 1}
  runs = [r for r in records if r.get("front") not in (None, "pretrained")]
  required = {"front", "knob", "knob_name", "method", "seed", "metric"}
  for r in runs:
    assert required | {"value", "protocol"} <= r.keys()
  for front in (*run.TOOLKIT_FRONTS, "full", "wise-ft", "profit-ratio"):
    for seed in (0, 1):
      knobs = {
        r["knob"] for r in runs if r["front"] == front and r["seed"] == seed
      }
      assert len(knobs) >= 4, front
  for r in runs:
    if r["front"].startswith("profit"):
      assert r["lr_ref"] > 0 and isinstance(r["ref_stable"], bool)
    if r["front"] in run.TOOLKIT_FRONTS:
      assert isinstance(r["diverged"], bool)
  warmup = [r for r in runs if r["front"] == "profit-warmup"]
  # 10 % of the run's update calls, a whole number of PROFIT cycles.
  meta = json.loads((out / "toy_toolkit_quick.json").read_text())["meta"]
  calls = {r["calls"] for r in warmup}
  assert meta["warmup_calls"] == 0.1 * calls.pop()
  assert meta["warmup_calls"] % (run.DEFAULT_N_REF + 1) == 0
  assert {r["lr_ref"] for r in warmup} == {
    run.Config().finetune.lr / k for k in run.RATIOS
  }


def test_toolkit_report(toolkit_quick):
  out, _ = toolkit_quick
  md = (out / "toy_toolkit_quick.md").read_text()
  assert "paired by seed" in md
  assert "The stable reference step, seed by seed" in md
  # The per-seed table: one row per seed, plain PROFIT and every knob of
  # the two stable-reference options.
  header = next(ln for ln in md.splitlines() if ln.startswith("| seed |"))
  assert "PROFIT lr/10" in header and "λ_max" in header
  assert header.count("trust r") == len(run.TRUST_RADII)
  assert header.count("precond /") == len(run.RATIOS)
  for seed in (0, 1):
    assert any(ln.startswith(f"| {seed} | ") for ln in md.splitlines())
  for front in run.TOOLKIT_FRONTS:
    assert f"| {front}, " in md  # its points against the rivals' front
  assert (out / "toy_toolkit_quick_fronts.png").stat().st_size > 10_000
  toy_cli.main(
    ["--from-json", str(out / "toy_toolkit_quick.json"), "--out", str(out)]
  )
  assert (out / "toy_toolkit_quick.md").read_text() == md


@pytest.mark.parametrize(
  "argv",
  [
    ["--toolkit", "--full"],
    ["--toolkit", "--calibrate"],
    ["--toolkit", "--quick", "--out", str(rep.RESULTS)],
  ],
)
def test_toolkit_rejects_other_modes_and_quick_results(argv):
  with pytest.raises(SystemExit):
    toy_cli.main(argv)
