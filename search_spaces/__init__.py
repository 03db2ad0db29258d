"""What to compare: search spaces (define-by-run functions returning a ``TrialConfig``), registered
by versioned name. ``get_space("gsa_block_v1")`` or ``get_space("my_space.py:space")``."""

from . import gsa_block, gsa_full, train_hparams  # noqa: F401  (registration)
from .registry import SpaceFn, get_space, list_spaces, register_space, space_name

__all__ = ["SpaceFn", "get_space", "list_spaces", "register_space", "space_name"]
