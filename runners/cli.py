"""The ``gsa-search`` command line: list, inspect, train, bench, search, ablate, report, compare, demo.

Status: stable. Built on argparse (standard library, no extra dependency): parent parsers give every
subcommand the same option names (``--dataset``, ``--epochs``, ``--seed``, ``--json``, ...), which
is what a CLI library would buy here. The CLI only parses, calls the library and the runners, and
prints: results go to stdout (one JSON document with ``--json``), progress and logs to stderr.

User errors (unknown names, bad values, missing data, malformed or unreachable storage) print one
line ``gsa-search: error: ...`` and exit 2 with no traceback (``--debug`` shows it); Ctrl-C exits
130 after the running trial is recorded.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Any, Sequence

__all__ = ["main", "build_parser"]

EXIT_USER, EXIT_BUG, EXIT_INTERRUPTED = 2, 1, 130


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(f"{message} (see {self.prog} --help)")


class _UsageError(Exception):
    pass


def _number(text: str) -> float:
    """``50M``, ``1.5G``, ``2e7``, ``300k`` -> float."""
    match = re.fullmatch(r"\s*([0-9.]+(?:e[+-]?\d+)?)\s*([kKmMgG]?)\s*", str(text))
    if not match:
        raise argparse.ArgumentTypeError(f"expected a number such as 5e7, 50M or 1.2G, got {text!r}")
    scale = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[match.group(2).lower()]
    return float(match.group(1)) * scale


def _checked(cast: type, minimum: float, strict: bool, wording: str) -> Any:
    """An argparse type: ``cast(text)`` that is finite and ``> minimum`` (``strict``) or ``>= minimum``."""

    def parse(text: str) -> Any:
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wording}, got {text!r}") from None
        if not math.isfinite(value) or value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(f"expected {wording}, got {text!r}")
        return value

    return parse


_positive_int = _checked(int, 1, False, "a positive integer")
_non_negative_int = _checked(int, 0, False, "an integer >= 0")
_non_negative_number = _checked(float, 0.0, False, "a number >= 0")
_positive_number = _checked(float, 0.0, True, "a positive number")


def _option_value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def _key_values(items: Sequence[str] | None, flag: str) -> dict[str, Any]:
    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise _UsageError(f"{flag} expects KEY=VALUE, got {item!r}")
        out[key.replace("-", "_")] = _option_value(value)
    return out


# --- shared option groups ------------------------------------------------------------------------------


def _output_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("output")
    group.add_argument("--json", action="store_true", help="print one JSON document on stdout (logs go to stderr)")
    group.add_argument("--quiet", action="store_true", help="no progress or logs on stderr (errors still print)")
    group.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    return parent


def _data_parent(default_dataset: str | None = "digits") -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("data")
    group.add_argument("--dataset", default=default_dataset, help="dataset name (see `gsa-search list datasets`); default %(default)s")
    group.add_argument("--data-dir", default=None, help="folder with the data files (cifar*, imagefolder)")
    group.add_argument("--image-size", type=_positive_int, default=None, help="input side in pixels (default: the dataset's; 16 for digits)")
    group.add_argument("--dataset-option", action="append", metavar="KEY=VALUE", help="a dataset option, e.g. val_fraction=0.2 (repeatable)")
    return parent


def _recipe_parent(*, seed: bool = True) -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("recipe (defaults: the tuned digits recipe on digits data, else Recipe())")
    group.add_argument("--epochs", type=_positive_int)
    group.add_argument("--batch-size", type=_positive_int)
    group.add_argument("--lr", type=float)
    group.add_argument("--weight-decay", type=float)
    group.add_argument("--optimizer", choices=["sgd", "adamw"])
    group.add_argument("--momentum", type=float)
    group.add_argument("--label-smoothing", type=float)
    group.add_argument("--schedule", choices=["cosine", "onecycle", "constant"])
    group.add_argument("--warmup-epochs", type=float)
    # an ablation runs every cell with each of --seeds instead: there --seed is hidden, and refused with a
    # message (kept as an option so that argparse does not read it as an abbreviation of --seeds)
    group.add_argument("--seed", type=int, help="training seed (and sampler seed for searches); default 0"
                       if seed else argparse.SUPPRESS)
    group.add_argument("--device", help=_DEVICE_HELP)
    group.add_argument("--precision", choices=["auto", "fp32", "bf16"])
    _channels_last_option(group)
    return parent


def _channels_last_option(p, what: str = "", blocks: bool = False) -> None:
    also = "; blocks benchmark: --channels-last times every block on channels-last maps (default NCHW)" if blocks else ""
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help=f"{what}train channels last, or NCHW with --no-channels-last (the recipe's channels_last; "
                        f"default 'auto': channels last on CPU, NCHW on CUDA){also}")


_RECIPE_FLAGS = ("epochs", "batch_size", "lr", "weight_decay", "optimizer", "momentum", "label_smoothing", "schedule",
                 "warmup_epochs", "seed", "device", "precision", "channels_last")


def _recipe_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in _RECIPE_FLAGS if getattr(args, k, None) is not None}


def _reports_dir_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reports-dir", default="reports", metavar="DIR",
                   help="where study folders live: DIR/STUDY/ (default %(default)s)")


def _study_option(p: argparse.ArgumentParser, default_text: str, dest: str = "study") -> None:
    p.add_argument("--study", dest=dest, default=None, metavar="NAME",
                   help=f"study name, and its folder REPORTS_DIR/NAME (default: {default_text})")


def _workers_option(p: argparse.ArgumentParser, default: int | None = 1, default_text: str = "1") -> None:
    p.add_argument("--workers", type=_positive_int, default=default, metavar="N",
                   help=f"worker processes on this machine (default {default_text})")


def _threads_option(p: Any, default_text: str = "cores / workers", per: str = " per worker") -> None:
    p.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                   help=f"torch CPU threads{per} (default: {default_text})")


_DEVICE_HELP = "auto | cpu | cuda | cuda:N (default auto: CUDA when present)"
_STORAGE_HELP = ("where the study is stored: an SQLAlchemy URL (postgresql+psycopg://user:pw@host:5432/db), "
                 "sqlite:///FILE or journal:FILE; default: SQLite in the study folder (a journal file with --workers > 1)")
_BACKEND_HELP = "optuna (default: in-process, --workers) | ray (Ray Tune on a local or running cluster)"
_ADDRESS_HELP = "join a running Ray cluster (started with `ray start --head`); default: a local cluster (--backend ray)"


def _config_option(p: argparse.ArgumentParser, command: str) -> None:
    p.add_argument("--config", metavar="FILE", default=None,
                   help=f"a study file (TOML or YAML) holding any of this command's options by their long names; "
                        f"flags override it; the resolved options are saved as reports/STUDY/config.toml "
                        f"(see search_spaces/demo/*.toml)")


def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    for action in parser._actions:  # noqa: SLF001 - argparse keeps subparsers there
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            return action.choices[command]
    raise KeyError(command)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse a command line; with ``--config FILE`` the file's options become the defaults, so
    flags given on the line override them."""
    parser = build_parser()
    args = _parse_known(parser, argv)
    if getattr(args, "config", None):
        from .study_file import load_config

        sub = _subparser(parser, args.command)
        sub.set_defaults(**load_config(args.config, args.command, sub))
        args = _parse_known(parser, argv)
    return args


def _parse_known(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """``parser.parse_args``, but an unrecognised argument is named with the closest option of the
    subcommand and its ``--help`` (argparse would point at the top-level help)."""
    import difflib

    args, extra = parser.parse_known_args(argv)
    if extra:
        sub = _subparser(parser, args.command)
        options = sorted({o for a in sub._actions for o in a.option_strings if o.startswith("--")})  # noqa: SLF001
        flag = next((e.partition("=")[0] for e in extra if e.startswith("--")), "")
        close = difflib.get_close_matches(flag, options, n=1, cutoff=0.75) if flag else []
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise _UsageError(f"unrecognized arguments: {' '.join(extra)}{hint} (see gsa-search {args.command} --help)")
    return args


def _save_config(args: argparse.Namespace, study_dir: Path, **resolved: Any) -> Path | None:
    """Write the resolved options beside the results (``study_dir/config.toml``)."""
    if not study_dir.is_dir():
        return None
    from .study_file import resolved_config, write_config

    config = resolved_config(args, _subparser(build_parser(), args.command), args.command, **resolved)
    header = (f"Resolved options of `gsa-search {args.command}` for this study; re-run (or resume) it with\n"
              f"  gsa-search {args.command} --config {study_dir / 'config.toml'}")
    return write_config(study_dir / "config.toml", config, header=header)


# --- the parser ----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    output, data, recipe = _output_parent(), _data_parent(), _recipe_parent()
    parser = _Parser(
        prog="gsa-search",
        description="Ablation studies and architecture/hyperparameter search over global self-attention blocks.",
        epilog="Example: gsa-search search --space gsa_block_v1 --objectives accuracy,flops --trials 20 --dataset digits",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("list", parents=[output], help="list blocks, models, spaces or datasets",
                       description="List registered names.", epilog="Example: gsa-search list models")
    p.add_argument("what", choices=["blocks", "models", "spaces", "datasets", "studies"])
    p.add_argument("pattern", nargs="?", default=None, help="glob over names, e.g. 'proxy_*'")

    p = sub.add_parser("inspect", parents=[output], help="parameters and FLOPs per stage of a model preset",
                       description="Parameters and FLOPs (multiply-accumulates) per stage, and the block configs.",
                       epilog="Example: gsa-search inspect proxy_gsa_resnet --image-size 32")
    p.add_argument("model", help="a model preset (see `gsa-search list models`)")
    p.add_argument("--image-size", type=_positive_int, default=None, help="default: the preset's")
    p.add_argument("--num-classes", type=_positive_int, default=None)
    p.add_argument("--in-channels", type=_positive_int, default=None)

    p = sub.add_parser("train", parents=[output, data, recipe], help="train one model preset, print its metrics",
                       description="One training run of a model preset on a dataset.",
                       epilog="Example: gsa-search train proxy_gsa_resnet --dataset digits --epochs 4")
    p.add_argument("model", help="a model preset (see `gsa-search list models`)")
    _threads_option(p, "torch's", per="")

    p = sub.add_parser("bench", parents=[output], help="block and trainer benchmarks",
                       description="Benchmarks: `blocks` times every mixer side by side (a middle layer: the input "
                                   "requires grad); `train` measures the trainer's overhead and time-to-accuracy on "
                                   "digits; `throughput` compares the training images/s of several models side by "
                                   "side; `search` the runner's overhead.",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="Examples:\n  gsa-search bench blocks --sizes 16 32 64 --threads 2\n"
                              "  gsa-search bench throughput --sizes 16 32 --threads 2")
    p.add_argument("what", choices=["blocks", "train", "throughput", "search", "pruning"],
                   help="pruning: `gsa-search bench pruning --help` lists its own options")
    p.add_argument("--sizes", type=_positive_int, nargs="+", default=[16, 32, 64])
    p.add_argument("--batch", type=_positive_int, default=None, help="default: 8 on CPU, 64 on CUDA")
    p.add_argument("--channels", type=_positive_int, default=64)
    p.add_argument("--heads", type=_positive_int, default=4)
    p.add_argument("--dim-key", type=_positive_int, default=16)
    p.add_argument("--rounds", type=_positive_int, default=None, help="interleaved rounds (blocks 9, train 5)")
    p.add_argument("--repeats", type=_positive_int, default=2)
    p.add_argument("--mhsa-max-size", type=_positive_int, default=32)
    p.add_argument("--model", default="proxy_gsa_resnet", help="model of the train benchmark")
    p.add_argument("--models", nargs="+", default=None, metavar="MODEL",
                   help="throughput benchmark: presets to compare, the first is the reference (default proxy_resnet "
                        "proxy_gsa_resnet proxy_gsa_positional proxy_gsa_2d; sizes default 16 32, batch 64)")
    _channels_last_option(p, "throughput, train and search benchmarks: ", blocks=True)
    p.add_argument("--skip-accuracy", action="store_true", help="train benchmark: overhead only")
    p.add_argument("--trials", type=_positive_int, default=5, help="search benchmark: trials")
    p.add_argument("--device", default="auto", help=_DEVICE_HELP)
    _threads_option(p, "torch's", per="")
    p.add_argument("--out", default="reports/bench", metavar="DIR", help="where the CSV and plots go (default %(default)s)")

    p = sub.add_parser("search", parents=[output, data, recipe], help="run or resume a search",
                       description="Run a search over a space with Optuna (default) or Ray Tune (--backend ray); "
                                   "re-running the same command resumes it.",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="Examples:\n"
                              "  gsa-search search --space gsa_block_v1 --objectives accuracy,flops --trials 20\n"
                              "  gsa-search search --space my_space.py:space --trials 50 --workers 2 \\\n"
                              "      --storage postgresql+psycopg://user:pw@db:5432/optuna --study shared\n"
                              "  gsa-search search --backend ray --address 127.0.0.1:6379 --objectives accuracy,flops \\\n"
                              "      --trials 50 --gpus-per-trial 0.5")
    _config_option(p, "search")
    p.add_argument("--space", default="gsa_block_v1", help="registered space (see `gsa-search list spaces`) or FILE.py:FUNCTION")
    p.add_argument("--objectives", default="accuracy", help="comma-separated subset of accuracy,flops,params,latency_ms")
    p.add_argument("--trials", type=_positive_int, default=20, help="trial budget of the study (default %(default)s)")
    p.add_argument("--sampler", default="auto", help="auto (tpe) | tpe | nsga2 | nsga3 | gp | random | grid | bruteforce")
    p.add_argument("--pruner", default="auto", help="auto (one objective: median with optuna, asha with ray; several: "
                                                     "pareto) | pareto | none | median | sha | hyperband (optuna) | asha (ray)")
    p.add_argument("--backend", default="optuna", help=_BACKEND_HELP)
    _workers_option(p)
    _threads_option(p)
    p.add_argument("--storage", default=None, metavar="URL", help=_STORAGE_HELP)
    p.add_argument("--max-flops", type=_number, default=None, help="budget in multiply-accumulates per image, e.g. 30M")
    p.add_argument("--max-params", type=_number, default=None, help="budget in parameters, e.g. 400k")
    _study_option(p, "SPACE-DATASET-OBJECTIVES")
    _reports_dir_option(p)
    ray_group = p.add_argument_group("Ray backend (--backend ray)")
    ray_group.add_argument("--address", default=None, metavar="HOST:PORT", help=_ADDRESS_HELP)
    ray_group.add_argument("--cpus-per-trial", type=_positive_number, default=None, help="CPUs per trial (default 1)")
    ray_group.add_argument("--gpus-per-trial", type=_non_negative_number, default=None,
                           help="GPUs per trial, fractions allowed (default 1 when CUDA is present, else 0)")
    ray_group.add_argument("--max-failures", type=_non_negative_int, default=None,
                           help="restarts of a trial whose worker died (default 3)")

    p = sub.add_parser("ablate", parents=[output, _recipe_parent(seed=False)], help="run or resume an ablation study",
                       description="Run every cell x seed of an ablation study exactly once (re-running resumes and "
                                   "runs only what is missing), then per-cell statistics and comparisons with the "
                                   "baseline (paired by seed, Holm-corrected, verdict better/worse/within noise).",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="Examples:\n"
                              "  gsa-search ablate gsa_content_positional_v1 --seeds 3\n"
                              "  gsa-search ablate search_spaces/studies/gsa_block_type_v1.toml --epochs 4")
    _config_option(p, "ablate")
    p.add_argument("spec", nargs="?", default=None,
                   help="a registered study (see `gsa-search list studies`), FILE.toml or FILE.py:NAME "
                        "(or `spec` in --config)")
    p.add_argument("--seeds", default=None, help="a count (3) or a list (0,1,2); every cell runs every seed "
                                                 "(default: the study's; --seed does not apply to ablations)")
    p.add_argument("--backend", default="optuna", help=_BACKEND_HELP)
    _study_option(p, "the ablation study's name", dest="study_name")
    _reports_dir_option(p)
    p.add_argument("--retry-failed", action="store_true", help="run failed cells again")
    _workers_option(p)
    _threads_option(p)
    p.add_argument("--storage", default=None, metavar="URL", help=_STORAGE_HELP)
    p.add_argument("--address", default=None, metavar="HOST:PORT", help=_ADDRESS_HELP)
    p.add_argument("--data-dir", default=None, help="folder with the data files (cifar*, imagefolder)")

    p = sub.add_parser("report", parents=[output], help="build the report of a study",
                       description="Write reports/STUDY/report.html (self-contained), report.md, pareto.csv and "
                                   "figures/ from the saved results table; nothing is rerun.",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="Examples:\n  gsa-search report gsa_block_v1-digits-pairs\n"
                              "  gsa-search report gsa_content_positional_v1 --reports-dir reports/reference --json")
    p.add_argument("study", help="a study name (a folder under --reports-dir)")
    _reports_dir_option(p)

    p = sub.add_parser("compare", parents=[output], help="compare the Pareto fronts of several studies",
                       description="One report comparing studies on their common objectives: each front, "
                                   "hypervolumes against one common reference point, which front points dominate "
                                   "the other studies', cells shared by ablations. Writes "
                                   "REPORTS_DIR/compare-STUDY_A-STUDY_B.../ (report.html, report.md, CSV tables, "
                                   "figures); nothing is rerun.",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="Examples:\n  gsa-search compare blocks-a blocks-b\n"
                              "  gsa-search compare gsa_content_positional_v1 gsa_block_type_v1 "
                              "--reports-dir reports/reference --json")
    p.add_argument("studies", nargs="+", metavar="STUDY", help="study names (folders under --reports-dir), at least 2")
    _reports_dir_option(p)

    p = sub.add_parser("demo", parents=[output], help="the main job: a search, two ablations and their reports",
                       description="On the bundled digits-pairs data: a multi-objective accuracy/FLOPs search over "
                                   "gsa_block_v1 with Pareto-aware pruning, the content/positional ablation and the "
                                   "block-type ablation (3 seeds each), then the report of each. The studies are the "
                                   "files in search_spaces/demo/. Re-running reuses every finished trial; "
                                   "interrupted, it continues where it stopped.",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="Examples:\n  gsa-search demo\n"
                              "  gsa-search demo --reports-dir reports/reference   # rebuild the reference reports")
    p.add_argument("--device", default="auto", help=_DEVICE_HELP)
    _workers_option(p, None, "1 on a GPU, else up to 4 sharing the cores")
    _threads_option(p, "cores / workers")
    _reports_dir_option(p)
    return parser


# --- commands ---------------------------------------------------------------------------------------------


def _emit(args: argparse.Namespace, document: Any, text: str) -> None:
    """Print the result: with ``--json`` one standard JSON document (NaN and infinities as null),
    else ``text``. Nothing else goes to stdout."""
    if args.json:
        print(json.dumps(_finite(document), indent=2, default=_json_default, allow_nan=False))
    else:
        print(text)


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None`` (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0 and not isinstance(value, (str, bytes)):
        return _finite(value.item())
    return value


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return _finite(value.item())
    return str(value)


def _cmd_list(args: argparse.Namespace) -> None:
    from gsa_search.blocks import list_blocks
    from gsa_search.data import list_datasets
    from gsa_search.models import list_models
    from search_spaces import list_spaces

    from search_spaces.ablation import list_studies

    names = {"blocks": list_blocks, "models": list_models, "spaces": list_spaces, "datasets": list_datasets,
             "studies": list_studies}[args.what](args.pattern)
    text = "\n".join(names)
    if args.what == "models" and names and not args.json:
        from gsa_search.zoo import zoo_table

        table = zoo_table(args.pattern)
        text = ("model presets at 32x32, 10 classes\n"
                + table.to_string(index=False, formatters={"params": "{:,}".format}))
    _emit(args, {args.what: names}, text)


def _model_config(name: str, **overrides: Any) -> Any:
    from gsa_search.models import list_models, model_config

    from .settings import UserError, suggest

    if name not in list_models():
        raise UserError(f"unknown model {name!r}{suggest(name, list_models())} (see `gsa-search list models`)")
    return model_config(name, **{k: v for k, v in overrides.items() if v is not None})


def _cmd_inspect(args: argparse.Namespace) -> None:
    from gsa_search import metrics as M
    from gsa_search.measure import count_params, flops_breakdown
    from gsa_search.models import build_model

    cfg = _model_config(args.model, image_size=args.image_size, num_classes=args.num_classes, in_channels=args.in_channels)
    model = build_model(cfg)
    shape = (1, cfg.in_channels, cfg.image_size, cfg.image_size)
    table = flops_breakdown(model, shape, depth=1)
    document = {"model": args.model, "image_size": cfg.image_size, "num_classes": cfg.num_classes,
                "params": count_params(model), "flops_convention": M.FLOPS_CONVENTION,
                "stages": json.loads(table.to_json(orient="records")), "config": cfg.to_dict()}
    mixers = "\n".join(f"  stage {i + 1}: {json.dumps(m.to_dict())}" for i, m in enumerate(cfg.mixers))
    text = (f"{args.model}: {document['params']:,} parameters at {cfg.image_size}x{cfg.image_size}, "
            f"{cfg.num_classes} classes\nFLOPs: {M.FLOPS_CONVENTION}\n{table.to_string(index=False)}\nmixers:\n{mixers}")
    _emit(args, document, text)


def _load_data(args: argparse.Namespace, seed: int) -> Any:
    from gsa_search.data import list_datasets
    from gsa_search.trial import load_data_cached

    from .settings import UserError, default_image_size, suggest

    if args.dataset not in list_datasets():
        raise UserError(f"unknown dataset {args.dataset!r}{suggest(args.dataset, list_datasets())} "
                        f"(known: {', '.join(list_datasets())})")
    if args.data_dir is not None and not Path(args.data_dir).expanduser().is_dir():
        raise UserError(f"--data-dir {args.data_dir} does not exist or is not a directory")
    image_size = args.image_size if args.image_size is not None else default_image_size(args.dataset)
    return _checked_data(lambda: load_data_cached(args.dataset, data_dir=args.data_dir, image_size=image_size,
                                                  seed=seed, **_key_values(args.dataset_option, "--dataset-option")))


def _checked_data(load: Any) -> Any:
    """``load()``, with a :class:`~gsa_search.data.DatasetError` reworded for the command line
    (``data_dir`` -> ``--data-dir``, ``download=True`` -> ``--dataset-option download=true``)."""
    from gsa_search.data import DatasetError

    from .settings import UserError

    try:
        return load()
    except (DatasetError, UserError) as error:  # check_data hands a DatasetError on as a UserError
        message = " ".join(str(error).split())
        message = (message.replace("data_dir is required", "--data-dir is required")
                   .replace("pass download=True", "add --dataset-option download=true"))
        raise UserError(message) from None


def _cmd_train(args: argparse.Namespace) -> None:
    from gsa_search import metrics as M
    from gsa_search.trainer import train

    from .settings import default_recipe

    cfg = _model_config(args.model)
    recipe = default_recipe(args.dataset or "").replace(**_recipe_overrides(args))
    data = _load_data(args, recipe.seed)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    started = time.perf_counter()

    def report(epoch: int, metrics: dict[str, float]) -> None:
        if not args.quiet:
            elapsed = time.perf_counter() - started
            left = recipe.epochs - epoch - 1
            eta = f", ETA {elapsed / (epoch + 1) * left:.0f} s" if left > 0 else ""
            print(f"epoch {epoch + 1}/{recipe.epochs}: accuracy {metrics[M.ACCURACY]:.4f}, "
                  f"train loss {metrics[M.TRAIN_LOSS]:.4f}, {metrics[M.TRAIN_TIME_S]:.1f} s{eta}", file=sys.stderr,
                  flush=True)

    result = train(cfg, recipe, data, report=report)
    keep = {k: v for k, v in result.items() if k not in ("history",)}
    text = "\n".join(f"{k}: {v}" for k, v in keep.items() if k != "model_config")
    _emit(args, {"model": args.model, "dataset": data.source, "recipe": recipe.to_dict(), **keep,
                 "history": result["history"]}, f"{data.source}\n{text}\nFLOPs: {M.FLOPS_CONVENTION}")


def _cmd_bench(args: argparse.Namespace) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    if args.what == "blocks":
        from . import bench_cmds

        document, text = bench_cmds.blocks(args, out)
    elif args.what == "train":
        from . import bench_cmds

        document, text = bench_cmds.train(args)
    elif args.what == "throughput":
        from . import bench_cmds

        for name in args.models or []:
            _model_config(name)  # an unknown name is one line, before any training
        document, text = bench_cmds.throughput(args)
    else:
        from . import bench_cmds

        document, text = bench_cmds.search(args, out)
    _emit(args, document, text)


def _search_settings(args: argparse.Namespace) -> Any:
    from .settings import SearchSettings

    objectives = tuple(o.strip() for o in args.objectives.split(",") if o.strip())
    recipe = _recipe_overrides(args)
    seed = recipe.get("seed", 0)
    return SearchSettings(
        space=args.space, objectives=objectives, n_trials=args.trials, study=args.study, sampler=args.sampler,
        pruner=args.pruner, seed=seed, storage=args.storage, workers=args.workers, threads=args.threads,
        max_flops=args.max_flops, max_params=args.max_params, dataset=args.dataset, data_dir=args.data_dir,
        image_size=args.image_size, dataset_options=_key_values(args.dataset_option, "--dataset-option"),
        recipe=recipe, reports_dir=args.reports_dir, backend=args.backend, address=args.address,
        cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial, max_failures=args.max_failures,
    )  # fmt: skip


def _front_text(result: Any) -> str:
    settings = result.settings
    front = result.front
    counts = ", ".join(f"{n} {state}" for state, n in result.counts.items() if n)
    lines = [f"study {settings.study_name}: {counts or 'no trials'} ({result.wall_s:.0f} s)",
             f"results: {result.study_dir / 'trials.csv'} (and .parquet); storage {result.storage}"]
    if len(front):
        params = [c for c in front.columns if c.startswith("param_")]
        shown = front[["trial", *settings.objectives, *params]].copy()
        shown.columns = [c.removeprefix("param_") for c in shown.columns]
        title = "Pareto front" if settings.multi_objective else "best trial"
        if not settings.multi_objective:
            column = settings.objectives[0]
            from gsa_search import metrics as M

            best = shown[column].idxmax() if M.DIRECTIONS[column] == "maximize" else shown[column].idxmin()
            shown = shown.loc[[best]]
        lines += [f"{title} (FLOPs = multiply-accumulates per image):",
                  shown.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.4g}")]
    else:
        lines.append("no completed trial yet")
    if result.interrupted:
        lines.append("interrupted: re-run the same command to resume (finished trials are kept)")
    return "\n".join(lines)


def _run_search_args(args: argparse.Namespace) -> Any:
    """Run (or resume) the search the parsed options describe; saves its config.toml."""
    settings = _search_settings(args)
    settings.validate()  # before importing Ray (a second or two) and before any folder exists
    _preflight_data(settings)
    if settings.backend == "ray":
        from .ray_runner import run_ray_search as run_search
    else:
        from .optuna_runner import run_search

    result = run_search(settings, progress=not args.quiet)
    _save_config(args, result.study_dir, study=settings.study_name, seed=settings.seed)
    return result


def _preflight_data(settings: Any) -> None:
    """:meth:`SearchSettings.check_data` (the runners call it too), with the error in the command
    line's words."""
    _checked_data(settings.check_data)


def _cmd_search(args: argparse.Namespace) -> int:
    result = _run_search_args(args)
    _emit(args, result.to_json(), _front_text(result))
    if result.interrupted:
        print("interrupted: re-run the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


DEMO_FILES = ("search.toml", "content_positional.toml", "block_type.toml")


def demo_files() -> list[Path]:
    """The demo's study files (``search_spaces/demo/``), in the order the demo runs them."""
    import search_spaces

    folder = Path(search_spaces.__file__).parent / "demo"
    return [folder / name for name in DEMO_FILES]


def _demo_workers(device: str) -> tuple[int, int]:
    """Worker processes and torch threads per worker for the demo: one worker on a GPU; on CPU up
    to four, each with an equal share of the cores (two 2-thread processes on 2 cores are slower
    than two 1-thread ones)."""
    import os

    from gsa_search.device import resolve_device

    if resolve_device(device).type == "cuda":
        return 1, max(1, (os.cpu_count() or 1) // 2)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = max(1, min(4, cores))
    return workers, max(1, cores // workers)


def _verdicts(document: dict[str, Any]) -> list[str]:
    rows = [r for r in document.get("comparisons") or [] if r.get("metric") == document.get("primary_metric")]
    summary = {(r["cell"], r["metric"]): r for r in document.get("summary") or []}
    lines = []
    for row in rows:
        cell = summary.get((row["cell"], row["metric"]), {})
        base = summary.get((document["baseline"], row["metric"]), {})
        low, high = row.get("ci_low"), row.get("ci_high")
        interval = f"[{low:+.3f}, {high:+.3f}]" if low is not None and high is not None else "[-]"
        mean = cell.get("mean")
        base_mean = base.get("mean")
        level = f"{mean:.3f}" if mean is not None else "-"
        base_level = f"{base_mean:.3f}" if base_mean is not None else "-"
        difference = row.get("difference")
        diff = f"{difference:+.3f}" if difference is not None else "-"
        lines.append(f"  {row['cell']}: {level} vs baseline {base_level}, difference {diff} {interval}: {row['verdict']}")
    return lines


def _cmd_demo(args: argparse.Namespace) -> int:
    from .report_cmd import report_main

    device = args.device or "auto"
    workers, threads = _demo_workers(device)
    if args.workers is not None:  # the same cores, shared by the workers asked for
        workers, threads = args.workers, max(1, (workers * threads) // args.workers)
    threads = args.threads or threads
    started = time.perf_counter()
    steps, lines = [], []
    if not args.quiet:
        print(f"gsa-search demo: {len(demo_files())} studies ({workers} worker(s) x {threads} thread(s), device "
              f"{device}); results and reports in {args.reports_dir}/", file=sys.stderr)
    for path in demo_files():
        command = _file_command(path)
        argv = [command, "--config", str(path), "--reports-dir", args.reports_dir, "--workers", str(workers),
                "--threads", str(threads), "--device", device]
        if args.quiet:
            argv.append("--quiet")
        step_args = parse_args(argv)
        step_started = time.perf_counter()
        if command == "search":
            result = _run_search_args(step_args)
            document, study_dir, interrupted = result.to_json(), result.study_dir, result.interrupted
            summary = _front_text(result)
        else:
            document, _ = _run_ablate_args(step_args, json_out=True)
            study_dir, interrupted = Path(document["study_dir"]), bool(document.get("interrupted"))
            summary = "\n".join([f"ablation {document['study']} ({len(document['seeds'])} seeds): accuracy, cell vs "
                                 "baseline, 95% CI of the difference, verdict (Holm-corrected)", *_verdicts(document)])
        step = {"file": str(path), "command": command, "study": document["study"], "study_dir": str(study_dir),
                "seconds": round(time.perf_counter() - step_started, 1), "interrupted": interrupted}
        if interrupted:
            steps.append(step)
            lines.append(summary)
            break
        report, _ = report_main(study_dir)
        step["report"] = next((f for f in report["files"] if f.endswith("report.html")), None)
        step["seconds"] = round(time.perf_counter() - step_started, 1)
        step["result"] = document
        steps.append(step)
        lines += [summary, f"report: {step['report']} (and report.md)", ""]
    wall = time.perf_counter() - started
    interrupted = any(s["interrupted"] for s in steps)
    if interrupted:
        lines.append("interrupted: re-run `make demo` (or `gsa-search demo`) to continue; finished trials are kept")
    else:
        lines.append(f"demo finished in {wall:.0f} s: " + ", ".join(f"{s['study']} {s['seconds']:.0f} s" for s in steps))
    _emit(args, {"steps": steps, "wall_s": round(wall, 1), "interrupted": interrupted}, "\n".join(lines))
    return EXIT_INTERRUPTED if interrupted else 0


def _file_command(path: Path) -> str:
    from .settings import UserError
    from .study_file import COMMANDS, read_file

    command = read_file(path).get("command")
    if command not in COMMANDS:
        raise UserError(f"{path}: the demo's study files must say command = \"search\" or \"ablate\"")
    return command


def _run_ablate_args(args: argparse.Namespace, *, json_out: bool) -> tuple[dict[str, Any], str]:
    """Run (or resume) the ablation the parsed options describe; saves its config.toml."""
    from .ablate_cmd import ablate_main

    recipe = _recipe_overrides(args)
    if args.spec is None:
        raise _UsageError("ablate needs a study: a registered name (see `gsa-search list studies`), FILE.toml, "
                          "FILE.py:NAME, or `spec` in a --config file")
    document, text = ablate_main(
        args.spec, seeds=args.seeds, backend=args.backend, study_name=args.study_name, reports_dir=args.reports_dir,
        retry_failed=args.retry_failed, workers=args.workers, storage=args.storage, quiet=args.quiet,
        json_out=json_out, recipe_overrides=recipe, data_dir=args.data_dir, threads=args.threads,
        address=args.address,
    )  # fmt: skip
    _save_config(args, Path(document["study_dir"]), study=document["study"], seeds=document["seeds"])
    return document, text


def _cmd_ablate(args: argparse.Namespace) -> int:
    document, text = _run_ablate_args(args, json_out=False)
    _emit(args, document, text)
    return EXIT_INTERRUPTED if document.get("interrupted") else 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .report_cmd import report_main

    document, text = report_main(Path(args.reports_dir) / args.study, json_out=args.json)
    _emit(args, document, text)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from .compare_cmd import compare_main

    reports_dir = Path(args.reports_dir)
    document, text = compare_main([reports_dir / name for name in args.studies], reports_dir=reports_dir,
                                  json_out=False)
    _emit(args, document, text)
    return 0


_COMMANDS = {"list": _cmd_list, "inspect": _cmd_inspect, "train": _cmd_train, "bench": _cmd_bench,
             "search": _cmd_search, "ablate": _cmd_ablate, "report": _cmd_report, "compare": _cmd_compare,
             "demo": _cmd_demo}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gsa-search`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if argv[:2] == ["bench", "pruning"]:  # a benchmark with its own options
        from . import bench_pruning

        return int(bench_pruning.main(argv[2:]) or 0)
    try:
        args = parse_args(argv)
        return int(_COMMANDS[args.command](args) or 0)
    except _UsageError as error:
        print(f"gsa-search: error: {error}", file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt:
        print("gsa-search: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SystemExit:
        raise
    except BaseException as error:  # noqa: BLE001 - the one place errors become one line
        if debug:
            raise
        from gsa_search.data import DatasetError

        from .settings import UserError

        message = " ".join(str(error).split()) or type(error).__name__
        if isinstance(error, (UserError, DatasetError, ValueError, FileNotFoundError)):
            print(f"gsa-search: error: {message}", file=sys.stderr)
            return EXIT_USER
        print(f"gsa-search: error: {type(error).__name__}: {message} (run with --debug for the traceback)",
              file=sys.stderr)
        return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())
