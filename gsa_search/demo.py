"""The demo: a small real ablation on the bundled digits data, CPU or GPU.

Status: stable until sweeps land. Trains the conv baseline and GSA variants (content + axial,
content-only, positional-only) as proxy ResNets with the same recipe and seed, and prints accuracy,
parameters, FLOPs and training time side by side; writes ``reports/demo/results.csv``.

``python -m gsa_search.demo [--epochs N] [--models proxy_resnet proxy_gsa_resnet ...]``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from . import metrics as M
from .data import load_dataset
from .device import resolve_device
from .models import model_config
from .train import DIGITS_IMAGE_SIZE, DIGITS_RECIPE, train

DEFAULT_MODELS = ("proxy_resnet", "proxy_gsa_resnet", "proxy_gsa_content", "proxy_gsa_positional")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gsa_search.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--epochs", type=int, default=DIGITS_RECIPE.epochs)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="reports/demo")
    args = parser.parse_args(argv)
    recipe = DIGITS_RECIPE.replace(epochs=args.epochs, device=args.device)
    data = load_dataset("digits", image_size=DIGITS_IMAGE_SIZE)
    print(f"digits: {data.source}; {len(data.train_x)} train / {len(data.val_x)} validation images, "
          f"{DIGITS_IMAGE_SIZE}x{DIGITS_IMAGE_SIZE}, device {resolve_device(args.device)}")
    rows = []
    for name in args.models:
        result = train(model_config(name), recipe, data)
        rows.append({"model": name, M.ACCURACY: result[M.ACCURACY], M.PARAMS: result[M.PARAMS],
                     M.FLOPS: result[M.FLOPS], M.TRAIN_TIME_S: result[M.TRAIN_TIME_S]})
        print(f"  {name:24s} accuracy {result[M.ACCURACY]:.4f}  {result[M.TRAIN_TIME_S]:.1f} s", flush=True)
    table = pd.DataFrame(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "results.csv", index=False)
    print(f"\nFLOPs: {M.FLOPS_CONVENTION}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"wrote {out / 'results.csv'}")


if __name__ == "__main__":
    main()
