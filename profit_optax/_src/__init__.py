"""Implementation modules of profit_optax; import from `profit_optax` instead."""
