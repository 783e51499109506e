"""Checkpoint/resume with Orbax at any point of a PROFIT cycle."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import profit_optax
from tests import helpers

ocp = pytest.importorskip("orbax.checkpoint")

CYCLES = 2


def loss_fn(params, key):
  kx, kn = jax.random.split(key)
  x = jax.random.normal(kx, (16, 3))
  y = x @ jnp.array([1.0, -2.0, 0.5]) + 0.3 * jax.random.normal(kn, (16,))
  return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


def make_call(tx):
  @jax.jit
  def call(params, state, key):
    updates, state = tx.update(jax.grad(loss_fn)(params, key), state, params)
    return optax.apply_updates(params, updates), state

  return call


def run(call, params, state, keys):
  for key in keys:
    params, state = call(params, state, key)
  return params, state


def assert_bit_identical(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(la, lb, strict=True):
    assert x.dtype == y.dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def assert_resumes_after_every_call(tx, params0, keys, path, check=None):
  """Saves after every call of a run over ``keys`` (reference calls,
  mid-cycle, and main calls, at a boundary), restores into an abstract target
  built from a fresh init, and checks that the restored checkpoint and the
  resumed run are bit-identical to the uninterrupted run. ``check(opt_state,
  stop)`` adds checks of each restored state. Returns the final state."""
  call = make_call(tx)
  want_params, want_state = run(call, params0, tx.init(params0), keys)
  target = jax.eval_shape(
    lambda: {"params": params0, "opt_state": tx.init(params0)}
  )
  with ocp.StandardCheckpointer() as checkpointer:
    for stop in range(1, len(keys)):
      params, state = run(call, params0, tx.init(params0), keys[:stop])
      checkpointer.save(
        path / f"stop{stop}", {"params": params, "opt_state": state}
      )
      checkpointer.wait_until_finished()
      restored = checkpointer.restore(path / f"stop{stop}", target)
      assert type(restored["opt_state"]) is type(state)
      if check is not None:
        check(restored["opt_state"], stop)
      assert_bit_identical(restored, {"params": params, "opt_state": state})
      got_params, got_state = run(
        call, restored["params"], restored["opt_state"], keys[stop:]
      )
      assert_bit_identical(got_params, want_params)
      assert_bit_identical(got_state, want_state)
  return want_state


@pytest.mark.parametrize("n_ref", [1, 2])
def test_resume_at_every_point_of_a_cycle(tmp_path, n_ref):
  tx = profit_optax.profit(optax.adam(1e-2), 1e-3, n_ref=n_ref)
  params0 = {"w": jnp.zeros(3), "b": jnp.zeros(())}
  keys = jax.random.split(jax.random.PRNGKey(0), CYCLES * (n_ref + 1))

  def check(opt_state, stop):
    assert isinstance(opt_state, profit_optax.ProfitState)
    assert opt_state.n_ref.value == n_ref
    assert int(opt_state.count) == stop % (n_ref + 1)

  assert_resumes_after_every_call(tx, params0, keys, tmp_path, check)


@pytest.mark.parametrize("kind", helpers.PROFIT_OPTIONS)
def test_toolkit_options_resume_bit_identically(tmp_path, kind):
  """The stable reference steps, per-layer PROFIT and ``profit_warmup``
  resume from a checkpoint taken after any call (mid-cycle, at a cycle's
  end, before and after the warmup's switch) as if never interrupted."""
  # Away from zero, so that the trust radius (relative to the anchor's
  # norm) is not zero from the start.
  params0 = {"w": jnp.array([0.5, -1.0, 0.2]), "b": jnp.array(0.1)}
  keys = jax.random.split(jax.random.PRNGKey(1), 9)
  state = assert_resumes_after_every_call(
    helpers.profit_option_tx(kind), params0, keys, tmp_path
  )
  # The run moved, and PROFIT stepped (after the switch, for the warmup).
  assert int(profit_optax.find_profit_state(state).step) >= 1


def test_a_0_1_checkpoint_fails_clearly_and_converts_as_the_changelog_says(
  tmp_path,
):
  # Version 0.1 stored the anchor; 0.2 stores Δ. A 0.1 checkpoint taken
  # mid-cycle (after the reference call) names the missing field when
  # restored into a 0.2 target, and CHANGELOG's recipe rebuilds the state.
  tx = profit_optax.profit(optax.adam(1e-2), 1e-3)
  call = make_call(tx)
  params0 = {"w": jnp.zeros(3), "b": jnp.zeros(())}
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  params, state = run(call, params0, tx.init(params0), keys[:1])
  anchor = params0  # the reference call moved the params away from it
  old = {
    **{k: v for k, v in state._asdict().items() if k not in ("delta", "n_ref")},
    "anchor": anchor,
  }
  checkpointer = ocp.StandardCheckpointer()
  path = tmp_path / "v0_1"
  checkpointer.save(path, {"params": params, "opt_state": old})
  checkpointer.wait_until_finished()
  target = jax.eval_shape(
    lambda: {"params": params0, "opt_state": tx.init(params0)}
  )
  with pytest.raises(ValueError, match=r"'delta'.*not found.*'anchor'"):
    checkpointer.restore(path, target)
  # The recipe: restore into the 0.1 layout, then Δ = params - anchor.
  fresh = tx.init(params0)
  old_layout = {
    k: v for k, v in fresh._asdict().items() if k not in ("delta", "n_ref")
  }
  old_layout["anchor"] = params0
  raw = checkpointer.restore(
    path,
    jax.eval_shape(lambda: {"params": params0, "opt_state": old_layout}),
  )
  checkpointer.close()
  fields = {k: v for k, v in raw["opt_state"].items() if k != "anchor"}
  rebuilt = fresh._replace(
    **fields,
    delta=jax.tree.map(jnp.subtract, raw["params"], raw["opt_state"]["anchor"]),
  )
  got, _ = run(call, raw["params"], rebuilt, keys[1:])
  want, _ = run(call, params, state, keys[1:])
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
    got,
    want,
  )
