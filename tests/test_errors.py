"""Bad input gets a clear error that names the argument and the fix."""

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import profit_optax


def loss_fn(params, batch):
  return jnp.mean((batch @ params["w"]) ** 2)


PARAMS = {"w": jnp.ones(2)}


@pytest.mark.parametrize("n_ref", [0, -1])
def test_n_ref_below_one(n_ref):
  with pytest.raises(ValueError, match=r"`n_ref` must be >= 1"):
    profit_optax.profit(optax.sgd(0.1), 0.01, n_ref=n_ref)


@pytest.mark.parametrize("n_ref", [1.0, 2.5, "1", True, None])
def test_n_ref_not_an_int(n_ref):
  with pytest.raises(TypeError, match=r"`n_ref` must be an int"):
    profit_optax.profit(optax.sgd(0.1), 0.01, n_ref=n_ref)


def test_n_ref_numpy_int_accepted():
  tx = profit_optax.profit(optax.sgd(0.1), 0.01, n_ref=np.int64(2))
  assert int(tx.init(PARAMS).n_ref.value) == 2


def test_n_ref_injected_without_static_args():
  tx = optax.inject_hyperparams(profit_optax.profit)(
    optimizer=optax.sgd(0.1), ref_learning_rate=0.01, n_ref=1
  )
  with pytest.raises(TypeError, match=r"static_args=\('n_ref',\)"):
    tx.init(PARAMS)


@pytest.mark.parametrize("rate", [-1e-3, float("nan"), float("inf")])
def test_bad_ref_learning_rate_value(rate):
  with pytest.raises(ValueError, match=r"`ref_learning_rate` must be finite"):
    profit_optax.profit(optax.sgd(0.1), rate)


@pytest.mark.parametrize("rate", ["0.1", [0.1], jnp.ones(2), True])
def test_bad_ref_learning_rate_type(rate):
  with pytest.raises(TypeError, match=r"`ref_learning_rate` must be"):
    profit_optax.profit(optax.sgd(0.1), rate)


def test_ref_learning_rate_required():
  with pytest.raises(TypeError, match=r"`ref_learning_rate` is required"):
    profit_optax.profit(optax.sgd(0.1), None)


def test_ref_learning_rate_and_ref_optimizer_both_given():
  with pytest.raises(ValueError, match=r"not both"):
    profit_optax.profit(optax.sgd(0.1), 0.01, ref_optimizer=optax.sgd(0.01))


@pytest.mark.parametrize("bad", [None, 0.1, "adam", optax.adam])
def test_optimizer_not_a_transformation(bad):
  with pytest.raises(TypeError, match=r"`optimizer` must be an optax"):
    profit_optax.profit(bad, 0.01)


def test_ref_optimizer_not_a_transformation():
  with pytest.raises(TypeError, match=r"`ref_optimizer` must be an optax"):
    profit_optax.profit(optax.sgd(0.1), None, ref_optimizer=0.01)


def test_params_none_in_init_and_update():
  tx = profit_optax.profit(optax.sgd(0.1), 0.01)
  with pytest.raises(ValueError, match=r"not passing `params`"):
    tx.init(None)
  state = tx.init(PARAMS)
  with pytest.raises(ValueError, match=r"not passing `params`"):
    tx.update(PARAMS, state)


def test_gradient_tree_mismatch():
  tx = profit_optax.profit(optax.sgd(0.1), 0.01)
  state = tx.init(PARAMS)
  with pytest.raises(ValueError, match=r"`updates` must have the same tree"):
    tx.update({"v": jnp.ones(2)}, state, PARAMS)
  with pytest.raises(ValueError, match=r"`updates` leaf 0 has shape \(3,\)"):
    tx.update({"w": jnp.ones(3)}, state, PARAMS)


def test_grad_fn_tree_mismatch():
  tx = profit_optax.profit(optax.sgd(0.1), 0.01, opaque_mode=True)
  state = tx.init(PARAMS)
  with pytest.raises(ValueError, match=r"`grad_fn\(params, i\)` must have"):
    tx.update(PARAMS, state, PARAMS, grad_fn=lambda p, i: [p["w"]])


def test_grad_fn_not_callable():
  tx = profit_optax.profit(optax.sgd(0.1), 0.01, opaque_mode=True)
  state = tx.init(PARAMS)
  with pytest.raises(TypeError, match=r"`grad_fn` must be a callable"):
    tx.update(PARAMS, state, PARAMS, grad_fn=3)


def test_update_with_foreign_state():
  tx = profit_optax.profit(optax.sgd(0.1), 0.01)
  with pytest.raises(TypeError, match=r"`state` must be the ProfitState"):
    tx.update(PARAMS, optax.sgd(0.1).init(PARAMS), PARAMS)


def test_profit_step_with_non_profit_state():
  tx = optax.adam(0.1)
  with pytest.raises(ValueError, match=r"`state` holds no PROFIT state"):
    profit_optax.profit_step(
      loss_fn, tx, PARAMS, tx.init(PARAMS), jnp.ones((2, 3, 2))
    )


def test_get_diagnostics_with_non_profit_state():
  with pytest.raises(ValueError, match=r"holds no PROFIT state"):
    profit_optax.get_diagnostics(optax.sgd(0.1).init(PARAMS))


@pytest.mark.parametrize("n_ref", [1, 2])
def test_profit_step_wrong_number_of_stacked_batches(n_ref):
  tx = profit_optax.profit(optax.sgd(0.1), 0.01, n_ref=n_ref)
  state = tx.init(PARAMS)
  with pytest.raises(ValueError, match=rf"length n_ref \+ 1 = {n_ref + 1}"):
    profit_optax.profit_step(
      loss_fn, tx, PARAMS, state, jnp.ones((n_ref + 2, 3, 2))
    )


def test_profit_step_iterator_runs_dry():
  tx = profit_optax.profit(optax.sgd(0.1), 0.01, n_ref=2)
  state = tx.init(PARAMS)
  with pytest.raises(ValueError, match=r"ran out after 2 of the 3 batches"):
    profit_optax.profit_step(
      loss_fn, tx, PARAMS, state, iter([jnp.ones((3, 2))] * 2)
    )


def test_profit_step_params_none():
  tx = profit_optax.profit(optax.sgd(0.1), 0.01)
  state = tx.init(PARAMS)
  with pytest.raises(ValueError, match=r"`params` is None"):
    profit_optax.profit_step(loss_fn, tx, None, state, jnp.ones((2, 3, 2)))


def test_profit_step_loss_not_scalar():
  tx = profit_optax.profit(optax.sgd(0.1), 0.01)
  state = tx.init(PARAMS)
  with pytest.raises(TypeError, match=r"scalar loss"):
    profit_optax.profit_step(
      lambda p, b: b @ p["w"], tx, PARAMS, state, jnp.ones((2, 3, 2))
    )


def test_profit_step_has_aux_but_loss_returns_scalar():
  tx = profit_optax.profit(optax.sgd(0.1), 0.01)
  state = tx.init(PARAMS)
  with pytest.raises(TypeError, match=r"must return \(loss, aux\)"):
    profit_optax.profit_step(
      loss_fn, tx, PARAMS, state, jnp.ones((2, 3, 2)), has_aux=True
    )


def test_profit_step_error_applies_nothing():
  """A failed call leaves params and state usable and unchanged."""
  tx = profit_optax.profit(optax.sgd(0.1), 0.01)
  state = tx.init(PARAMS)
  batches = iter([jnp.ones((3, 2))])
  with pytest.raises(ValueError):
    profit_optax.profit_step(loss_fn, tx, PARAMS, state, batches)
  out = profit_optax.profit_step(
    loss_fn, tx, PARAMS, state, jnp.ones((2, 3, 2))
  )
  assert int(out.opt_state.step) == 1
  jax.block_until_ready(out.params)


# --------------------------------------------------------------------------
# Random mismatches (hypothesis)
# --------------------------------------------------------------------------

_shapes = st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple)


@st.composite
def mismatched_trees(draw):
  """Params and a gradient tree that differs in structure or in one shape."""
  names = draw(
    st.lists(st.sampled_from("abcde"), min_size=1, max_size=4, unique=True)
  )
  shapes = [draw(_shapes) for _ in names]
  params = {n: np.zeros(s, np.float32) for n, s in zip(names, shapes)}
  kind = draw(st.sampled_from(["drop", "add", "shape", "nest"]))
  grads = dict(params)
  if kind == "drop" and len(names) > 1:
    del grads[names[0]]
  elif kind == "add":
    grads["z"] = np.zeros((1,), np.float32)
  elif kind == "nest":
    grads[names[0]] = {"inner": grads[names[0]]}
  else:
    grads[names[0]] = np.zeros(shapes[0] + (2,), np.float32)
  return params, grads


@hypothesis.settings(max_examples=15, deadline=None)
@hypothesis.given(mismatched_trees())
def test_random_gradient_mismatch_is_reported(case):
  params, grads = case
  tx = profit_optax.profit(optax.adam(0.1), 0.01)
  opaque = profit_optax.profit(optax.adam(0.1), 0.01, opaque_mode=True)
  state = tx.init(params)
  with pytest.raises(
    ValueError,
    match=r"`updates` (must have the same tree|"
    r"leaf \d+ has shape)",
  ):
    tx.update(grads, state, params)
  with pytest.raises(
    ValueError,
    match=r"`updates` (must have the same tree|"
    r"leaf \d+ has shape)",
  ):
    opaque.update(grads, opaque.init(params), params, grad_fn=lambda p, i: p)
  # Nothing was applied: the same state still works with the right gradients.
  updates, new_state = tx.update(params, state, params)
  assert int(new_state.count) == 1


def test_profit_step_batches_of_different_structure():
  tx = profit_optax.profit(optax.sgd(0.1), 0.01)
  state = tx.init(PARAMS)
  batches = iter([jnp.ones((3, 2)), (jnp.ones((3, 2)),)])
  with pytest.raises(ValueError, match=r"different tree structures"):
    profit_optax.profit_step(loss_fn, tx, PARAMS, state, batches)


def test_profit_step_empty_batches():
  tx = profit_optax.profit(optax.sgd(0.1), 0.01)
  state = tx.init(PARAMS)
  with pytest.raises(ValueError, match=r"`batches` is empty"):
    profit_optax.profit_step(loss_fn, tx, PARAMS, state, {})


def test_profit_step_loss_fn_not_callable():
  tx = profit_optax.profit(optax.sgd(0.1), 0.01)
  with pytest.raises(TypeError, match=r"`loss_fn` must be callable"):
    profit_optax.profit_step(
      None, tx, PARAMS, tx.init(PARAMS), jnp.ones((2, 3, 2))
    )


def test_profit_step_model_state_loss_returns_scalar():
  tx = profit_optax.profit(optax.sgd(0.1), 0.01)
  with pytest.raises(TypeError, match=r"must return \(loss, new_model_state\)"):
    profit_optax.profit_step(
      lambda p, s, b: loss_fn(p, b),
      tx,
      PARAMS,
      tx.init(PARAMS),
      jnp.ones((2, 3, 2)),
      model_state={"mean": jnp.zeros(2)},
    )


def test_drive_is_fixed_when_the_transformation_is_built():
  per_call = profit_optax.profit(optax.sgd(0.1), 0.01)
  opaque = profit_optax.profit(optax.sgd(0.1), 0.01, opaque_mode=True)
  with pytest.raises(TypeError, match=r"build it with.*opaque_mode=True"):
    per_call.update(
      PARAMS, per_call.init(PARAMS), PARAMS, grad_fn=lambda p, i: p
    )
  with pytest.raises(TypeError, match=r"needs\s+`grad_fn=lambda params, i"):
    opaque.update(PARAMS, opaque.init(PARAMS), PARAMS)
  with pytest.raises(TypeError, match=r"initialise it with this"):
    per_call.update(PARAMS, opaque.init(PARAMS), PARAMS)
  with pytest.raises(TypeError, match=r"`opaque_mode` must be True or False"):
    profit_optax.profit(optax.sgd(0.1), 0.01, opaque_mode="yes")


def test_profit_phase_must_be_reference_or_main():
  tx = profit_optax.profit(optax.sgd(0.1), 0.01)
  with pytest.raises(ValueError, match=r"`profit_phase` must be None"):
    tx.update(PARAMS, tx.init(PARAMS), PARAMS, profit_phase="ref")
