"""Shared test settings: deterministic CPU runs with few threads (the CI machine has 2 cores)."""

import torch

torch.set_num_threads(2)
