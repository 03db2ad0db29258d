"""The model zoo as a table: every preset with its stage mixers and parameter count.

Status: stable. ``gsa-search list models`` prints it.
Parameter counts depend on the input size only through GSA's global relative embeddings, whose
length follows the stage resolution.
"""

from __future__ import annotations

import pandas as pd

from .measure import count_params
from .models import create_model, list_models

__all__ = ["zoo_table"]


def zoo_table(pattern: str | None = None, *, image_size: int = 32, num_classes: int = 10) -> pd.DataFrame:
    rows = []
    for name in list_models(pattern):
        model = create_model(name, image_size=image_size, num_classes=num_classes)
        cfg = model.cfg
        rows.append(
            {
                "model": name,
                "backbone": cfg.backbone_type,
                "stages": "-".join(str(b) for b in getattr(cfg, "stage_blocks", ())),
                "mixers": ",".join(m.block_type for m in getattr(cfg, "mixers", ())),
                "stem": getattr(cfg, "stem", ""),
                "params": count_params(model),
            }
        )
    return pd.DataFrame(rows)
