"""Implementation modules; import the public API from `profit_optax`."""
