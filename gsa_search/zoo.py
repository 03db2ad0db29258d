"""The model zoo as a table: every preset with its stage mixers and parameter count.

Status: stable. ``python -m gsa_search.zoo [--image-size 32] [--num-classes 10] [pattern]``.
Parameter counts depend on the input size only through GSA's global relative embeddings, whose
length follows the stage resolution.
"""

from __future__ import annotations

import argparse

import pandas as pd

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
                "stages": "-".join(str(b) for b in cfg.stage_blocks),
                "mixers": ",".join(m.block_type for m in cfg.mixers),
                "stem": cfg.stem,
                "params": sum(p.numel() for p in model.parameters()),
            }
        )
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gsa_search.zoo", description=__doc__.splitlines()[0])
    parser.add_argument("pattern", nargs="?", default=None, help="glob over preset names, e.g. 'proxy_*'")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--num-classes", type=int, default=10)
    args = parser.parse_args(argv)
    table = zoo_table(args.pattern, image_size=args.image_size, num_classes=args.num_classes)
    print(f"model zoo at {args.image_size}x{args.image_size}, {args.num_classes} classes")
    print(table.to_string(index=False, formatters={"params": "{:,}".format}))


if __name__ == "__main__":
    main()
