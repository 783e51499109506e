"""The image and rounding benchmarks run end to end in their quick modes."""

import jax
import jax.numpy as jnp
import optax
import pytest

from benchmarks.image import __main__ as image_cli
from benchmarks.image import report, run, task


@pytest.fixture(scope="module")
def image_quick(tmp_path_factory):
  out = tmp_path_factory.mktemp("image")
  records = image_cli.main(
    ["--quick", "--no-cache", "--no-progress", "--out", str(out)]
  )
  return out, records


def test_every_stage_is_recorded(image_quick):
  _, records = image_quick
  assert {r["shift"] for r in records if "shift" in r} == {
    "new-labels",
    "rotated",
  }
  cfg = run.Config().quick()
  for shift in ("new-labels", "rotated"):
    at = [r for r in records if r.get("shift") == shift]
    chosen = {r["method"] for r in at if r.get("stage") == "chosen"}
    assert chosen == set(cfg.methods)
    # One chosen configuration per method, on every seed.
    for m in chosen:
      confs = {
        (r["lr"], r["ratio"], r["n_ref"])
        for r in at
        if r.get("stage") == "chosen" and r["method"] == m
      }
      seeds = {
        r["seed"] for r in at if r.get("stage") == "chosen" and r["method"] == m
      }
      assert len(confs) == 1 and seeds == {0, 1}
    fronts = {}
    for r in at:
      if r.get("front"):
        fronts.setdefault(r["front"], set()).add(r["knob"])
        assert r["knob_name"]
    assert fronts["full-adamw"] == set(run.GRIDS["full-adamw"])
    assert fronts["profit-ratio"] == set(run.RATIOS)
    assert len(fronts["wise-ft"]) == 5 and fronts["profit-nref"] == {1, 2}
    assert any(r["metric"] == "curve_acc_new_val" for r in at)
  assert all(0.0 <= r["value"] <= 1.0 for r in records)


def test_progress_total_counts_every_result(image_quick):
  # One fine-tuning result per record group of the tuning, chosen and front
  # stages (WiSE-FT mixes weights; it fine-tunes nothing).
  _, records = image_quick
  cfg = run.Config().quick()
  for shift in ("new-labels", "rotated"):
    results = [
      r
      for r in records
      if r.get("shift") == shift
      and r["metric"] == "acc_new_val"
      and (r.get("stage") or r.get("front") not in (None, "wise-ft"))
    ]
    assert len(results) == run.count_runs(cfg.at("cnn", shift))


def test_tuning_uses_validation_only(image_quick):
  _, records = image_quick
  # The chosen rate of each method is the best new-task validation accuracy
  # of its grid (the default score).
  assert run.Config().score == "new"
  for shift in ("new-labels", "rotated"):
    tune = [
      r for r in records if r.get("shift") == shift and r.get("stage") == "tune"
    ]
    for method in {r["method"] for r in tune}:
      score = {
        r["lr"]: r["value"]
        for r in tune
        if r["method"] == method and r["metric"] == "acc_new_val"
      }
      (lr,) = {
        r["lr"]
        for r in records
        if r.get("shift") == shift
        and r.get("stage") == "chosen"
        and r["method"] == method
      }
      assert score[lr] == max(score.values())


@pytest.mark.parametrize(("score", "expected"), [("new", 3e-4), ("mean", 1e-5)])
def test_config_choose_by_score(score, expected):
  # One forgets less, the other learns more: the scores disagree.
  results = {
    1e-5: {"acc_old_val": 0.95, "acc_new_val": 0.80},
    3e-4: {"acc_old_val": 0.60, "acc_new_val": 0.90},
  }
  assert run.Config(score=score).choose(results) == expected


def test_config_rejects_unknown_score():
  with pytest.raises(ValueError, match="score must be one of"):
    run.Config(score="old")


def test_report_and_figures(image_quick):
  out, _ = image_quick
  md = (out / "image_quick.md").read_text()
  for section in (
    "Pretraining on MNIST",
    "horizon",
    "Validation-based choice",
    "beyond its rivals",
  ):
    assert section in md
  for png in ("pretrain", "curves", "fronts"):
    assert (out / f"image_quick_{png}.png").stat().st_size > 10_000
  # The default score is the new-task accuracy: no (score) cells.
  assert "score: new-task validation accuracy" in md
  assert "| plateau |" in md and "(score)" not in md


def test_report_reads_the_score_of_its_run():
  assert report.score_of({"config": "Config(steps=8, score='new')"}) == "new"
  assert report.score_of({"config": "Config(score='mean')"}) == "mean"
  # Runs from before the choice existed were scored by the mean.
  assert report.score_of({"config": "Config(steps=4000)"}) == "mean"


@pytest.mark.parametrize("kind", run.METHODS[:5])
def test_every_rival_optimizer_steps(kind):
  params = task.init_params("cnn", 10, jax.random.PRNGKey(0))
  tx = run.make_tx(kind)({"lr": jnp.float32(1e-3), "ratio": jnp.float32(10.0)})
  images = jax.random.uniform(jax.random.PRNGKey(1), (4, 28, 28))
  batch = (images, jnp.arange(4, dtype=jnp.int32))
  grads = jax.grad(task.make_loss("cnn"))(params, batch)
  updates, _ = tx.update(grads, tx.init(params), params)
  moved = optax.tree.norm(updates["trunk"]) > 0
  assert bool(moved) == (kind != "head-adamw")


@pytest.fixture(scope="module")
def toolkit_quick(tmp_path_factory):
  out = tmp_path_factory.mktemp("image_toolkit")
  records = image_cli.main(
    [
      "--quick",
      "--toolkit",
      "--archs",
      "cnn",
      "--shifts",
      "new-labels",
      "--no-cache",
      "--no-progress",
      "--out",
      str(out),
    ]
  )
  return out, records


def test_toolkit_fronts_and_choice(toolkit_quick):
  _, records = toolkit_quick
  (lr,) = {
    r["lr"]
    for r in records
    if r.get("stage") == "chosen" and r["method"] == "full-adamw"
  }
  for front, (knob_name, grid) in run.TOOLKIT.items():
    at = [r for r in records if r.get("front") == front]
    assert {r["knob_name"] for r in at} == {knob_name}
    knobs = {r["knob"] for r in at}
    assert len(knobs) >= 4 and knobs == set(grid)
    assert {r["seed"] for r in at} == {0, 1}
    assert {r["method"] for r in at} == {front}
    assert {r["lr"] for r in at} == {lr}
    assert all(r["shift"] == "new-labels" and r["arch"] == "cnn" for r in at)
    # The knob is the best validation score on seed 0 (the rivals' rule).
    score = {
      r["knob"]: r["value"]
      for r in records
      if r.get("stage") == "toolkit-tune"
      and r["method"] == front
      and r["metric"] == "acc_new_val"
    }
    (chosen,) = {
      r["knob"]
      for r in records
      if r.get("stage") == "toolkit-chosen" and r["method"] == front
    }
    assert score[chosen] == max(score.values())


def test_toolkit_report(toolkit_quick):
  out, _ = toolkit_quick
  name = "image_toolkit_new-labels_quick"
  md = (out / f"{name}.md").read_text()
  for section in (
    "## cnn, new-labels",
    "Validation-based choice of each toolkit knob",
    "Test accuracy at the chosen values",
    "Fronts: the new methods against full AdamW and WiSE-FT",
  ):
    assert section in md
  for front in run.TOOLKIT_FRONTS:
    knob_name, grid = run.TOOLKIT[front]
    for knob in grid:
      assert f"| {front}, {knob_name} {knob:g} |" in md
  assert (out / f"{name}.json").exists()
  assert (out / f"{name}_fronts.png").stat().st_size > 10_000
  # Re-rendered from its records, the report is the same.
  image_cli.main(["--from-json", str(out / f"{name}.json"), "--out", str(out)])
  assert (out / f"{name}.md").read_text() == md


def _steps(tx, params, batches, loss):
  state = tx.init(params)
  update, grad = jax.jit(tx.update), jax.jit(jax.grad(loss))
  for batch in batches:
    updates, state = update(grad(params, batch), state, params)
    params = optax.apply_updates(params, updates)
  return params


def test_profit_warmup_is_the_hand_built_schedule():
  """``profit_warmup`` is AdamW for the warmup calls, then a fresh PROFIT
  (its AdamW restarted), as the two phases the benchmark ran before."""
  params = task.init_params("cnn", 10, jax.random.PRNGKey(0))
  loss = task.make_loss("cnn")
  keys = jax.random.split(jax.random.PRNGKey(1), 8)
  batches = [
    (
      jax.random.uniform(k, (4, 28, 28)),
      jax.random.randint(k, (4,), 0, 10),
    )
    for k in keys
  ]
  h = {"lr": 1e-3, "ratio": 10.0, "knob": 0.0}
  warm = _steps(run.make_tx("full-adamw")(h), params, batches[:2], loss)
  by_hand = _steps(run.make_tx("profit")(h), warm, batches[2:], loss)
  one = _steps(run.make_tx("profit-warmup", warmup=2)(h), params, batches, loss)
  for a, b in zip(jax.tree.leaves(by_hand), jax.tree.leaves(one)):
    assert jnp.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("kind", run.TOOLKIT_FRONTS)
@pytest.mark.parametrize("new_head", [True, False])
def test_toolkit_optimizers_step(kind, new_head):
  params = task.init_params("cnn", 10, jax.random.PRNGKey(0))
  knob = {"profit-trust": 1e-3, "l2sp": 1.0, "ftp": 1.0, "spd": 1.0}
  h = {"lr": 1e-3, "ratio": 10.0, "knob": knob.get(kind, 0.0)}
  tx = run.make_tx(kind, warmup=2, new_head=new_head)(h)
  images = jax.random.uniform(jax.random.PRNGKey(1), (4, 28, 28))
  batch = (images, jnp.arange(4, dtype=jnp.int32))
  grads = jax.grad(task.make_loss("cnn"))(params, batch)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  assert optax.tree.norm(updates["trunk"]) > 0
  assert optax.tree.norm(updates["head"]) > 0


def test_ftp_rows_of_the_vit_are_output_channels():
  from benchmarks.image.run import ftp_channel_axis

  params = task.init_params("vit", 10, jax.random.PRNGKey(0))
  axes = {
    jax.tree_util.keystr(path): ftp_channel_axis(path, leaf)
    for path, leaf in jax.tree_util.tree_leaves_with_path(params)
  }
  attn = "['trunk']['MultiHeadDotProductAttention_0']"
  assert axes[f"{attn}['query']['kernel']"] == (-2, -1)
  assert axes[f"{attn}['value']['bias']"] == ()
  assert axes[f"{attn}['out']['kernel']"] is None  # (heads, dim, out)
  assert axes["['trunk']['pos']"] == ()
  assert axes["['trunk']['Dense_0']['kernel']"] is None  # (in, out)
  tx = run.make_tx("ftp", new_head=True)(
    {"lr": 1e-3, "ratio": 10.0, "knob": 1.0}
  )
  tx.init(params)  # FTP checks every leaf's row axes here


def test_vit_forward_and_accuracy():
  params = task.init_params("vit", 10, jax.random.PRNGKey(0))
  images, labels = jnp.zeros((2, 3, 28, 28)), -jnp.ones((2, 3), jnp.int32)
  labels = labels.at[0].set(jnp.array([0, 1, 2]))
  acc = task.accuracy_fn("vit")(params, images, labels)
  assert 0.0 <= float(acc) <= 1.0


def test_config_rejects_missing_methods():
  with pytest.raises(ValueError, match="full-adamw"):
    run.Config(methods=("profit",))


def test_each_setting_has_its_horizon():
  cfg = run.Config()
  labels, rotated = cfg.at("cnn", "new-labels"), cfg.at("cnn", "rotated")
  assert (labels.steps, rotated.steps) == (8000, 1000)
  assert cfg.at("vit", "new-labels").steps == 12000
  assert cfg.at("vit", "rotated").steps == 1000
  # PROFIT (warmup)'s AdamW phase is 10% of each setting's own horizon.
  assert (labels.warmup_steps, rotated.warmup_steps) == (800, 100)
  assert run.Run("profit", 1e-4, 0, 10.0, 1).calls(labels) == 16000
  # --quick: one short horizon everywhere.
  assert cfg.quick().at("cnn", "new-labels").steps == cfg.quick().steps


def test_pretraining_shift_augmentation_moves_images():
  images = jnp.zeros((1, 28, 28)).at[0, 14, 14].set(1.0)
  x, _ = task.sampler(64, shift=2)(
    jax.random.PRNGKey(0), (images, jnp.zeros(1, jnp.int32))
  )
  assert x.shape == (64, 28, 28)
  assert len({tuple(map(int, jnp.argwhere(im)[0])) for im in x}) > 1
  assert float(x.sum()) == 64.0


def test_image_without_data_says_how_to_fetch(tmp_path, monkeypatch, capsys):
  from benchmarks.image import data

  monkeypatch.setattr(data, "DATA", tmp_path / "empty")
  monkeypatch.setattr(data, "SYSTEM_FASHION", tmp_path / "none")
  with pytest.raises(SystemExit) as exit_info:
    image_cli.main(["--data", "mnist", "--no-progress", "--out", str(tmp_path)])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert "MNIST" in err and "scripts/fetch_data.sh" in err
  assert not list(tmp_path.glob("*.json"))


def test_rounding_quick(tmp_path):
  from benchmarks.rounding import __main__ as rounding_cli

  records = rounding_cli.main(["--quick", "--no-cache", "--out", str(tmp_path)])
  errors, kept = {}, {}
  for r in records:
    if r["metric"] == "delta_rel_error":
      errors.setdefault((r["arch"], r["shift"]), []).append(r["value"])
    if r["metric"] == "kept_delta_rel_error":
      kept.setdefault((r["arch"], r["shift"]), []).append(r["value"])
  assert len(errors) == 4 and kept.keys() == errors.keys()
  for key, errs in errors.items():
    # The smaller the reference step, the larger its share of rounding in
    # θ' - anchor; the Δ the package keeps is the step itself, rounded once.
    assert errs == sorted(errs) and errs[0] < 0.05
    assert max(kept[key]) < 1e-6 < errs[-1]


def test_pretraining_is_redone_with_its_curve_and_checked_against_the_cache(
  tmp_path, monkeypatch
):
  from benchmarks._common import cache

  monkeypatch.setattr(cache, "CACHE", tmp_path / "cache")
  cfg = run.Config().quick()
  old, _ = task.load_tasks(cfg.source, cfg.val)
  run.pretrain("cnn", old, cfg, use_cache=True)  # what the runs start from
  out = tmp_path / "out"
  records = image_cli.main(
    ["--pretraining", "--quick", "--archs", "cnn", "--out", str(out)]
  )
  curve = [r for r in records if r["metric"] == "pretrain_acc_val"]
  assert [r["step"] for r in curve] == [50, 100]
  (diff,) = [
    r["value"] for r in records if r["metric"] == "max_abs_diff_cached"
  ]
  assert diff == 0.0
  md = (out / "image_pretraining_quick.md").read_text()
  assert "max abs diff to the cached weights" in md and "| cnn |" in md
  assert (out / "image_pretraining_quick_pretrain.png").exists()
