"""How sweeps run: the Optuna runner, the results table, the ``gsa-search`` command line."""
