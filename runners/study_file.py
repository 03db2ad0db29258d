"""Study files: every option of ``search`` and ``ablate`` from one TOML or YAML file (``--config FILE``).

Status: new. The keys are the commands' long option names (``trials``, ``objectives``,
``max_flops``, ``epochs``, ...; ``-`` or ``_``), with three conveniences: ``objectives`` may be a
list, ``seeds`` an integer or a list, and ``dataset_options`` a table (``--dataset-option
KEY=VALUE``). ``ablate`` takes the study to run as ``spec``. An optional ``command`` key names the
command the file is for. Values go through the same parsers as the flags, so a file can express
exactly what a command line can; flags given on the command line override the file.

Every error names the file, the key and what is allowed (:class:`~runners.settings.UserError`), and
is raised before anything runs. :func:`resolved_config` turns the parsed options back into a study
file, which the commands save as ``reports/<study>/config.toml``: ``--config`` with it reproduces
the study (and, the study being stored, resumes it).

Example (``search_spaces/demo/search.toml``)::

    command = "search"
    space = "gsa_block_v1"
    objectives = ["accuracy", "flops"]
    trials = 8
    dataset = "digits-pairs"
"""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path
from typing import Any, Mapping

from .settings import UserError, suggest

__all__ = ["COMMANDS", "read_file", "load_config", "resolved_config", "write_config", "option_keys"]

COMMANDS = ("search", "ablate")
# output switches, not part of what a study is
_NOT_KEYS = {"help", "config", "json", "debug", "quiet"}
_LISTS = {"objectives": ",", "seeds": ","}  # comma-separated on the command line, lists in a file


def _key_of(action: argparse.Action) -> str:
    longs = [s for s in action.option_strings if s.startswith("--")]
    return (longs[0][2:] if longs else action.dest).replace("-", "_")


def option_keys(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The keys a study file of ``parser``'s command may hold, with the action each one sets."""
    keys = {}
    for action in parser._actions:  # noqa: SLF001 - argparse has no public accessor
        key = _key_of(action)
        if key in _NOT_KEYS or action.dest == argparse.SUPPRESS or action.help == argparse.SUPPRESS:
            continue
        keys["dataset_options" if key == "dataset_option" else key] = action
    return keys


def read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"--config {path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            data = tomllib.loads(path.read_text())
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(path.read_text())
            data = {} if data is None else data
        else:
            raise UserError(f"--config {path}: expected a .toml, .yaml or .yml file")
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"--config {path}: not valid TOML: {error}") from None
    except UnicodeDecodeError:
        raise UserError(f"--config {path}: not a text file") from None
    except Exception as error:  # yaml.YAMLError and friends: keep the one-line contract
        if isinstance(error, UserError):
            raise
        raise UserError(f"--config {path}: not valid YAML: {' '.join(str(error).split())}") from None
    if not isinstance(data, dict):
        raise UserError(f"--config {path}: expected a table of options at the top level, got {type(data).__name__}")
    return data


def _wording(action: argparse.Action) -> str:
    if action.choices:
        return "one of " + ", ".join(map(str, action.choices))
    names = {int: "an integer", float: "a number", None: "a string"}
    if action.type in names:
        return names[action.type]  # type: ignore[index]
    try:  # the flag's own parser words what it expects: "expected a positive integer, got '?'"
        action.type("?")  # type: ignore[misc]
    except argparse.ArgumentTypeError as error:
        return str(error).removeprefix("expected ").split(", got")[0]
    except (ValueError, TypeError):
        pass
    return "a value like the flag's " + "/".join(action.option_strings)


def _scalar(value: Any, action: argparse.Action, where: str) -> Any:
    if isinstance(value, (dict, list)):
        raise UserError(f"{where}: expected {_wording(action)}, got a {'table' if isinstance(value, dict) else 'list'}")
    if isinstance(value, bool) and action.type is not None:
        raise UserError(f"{where}: expected {_wording(action)}, got {str(value).lower()}")
    if action.type is None:
        if not isinstance(value, str):
            raise UserError(f"{where}: expected a string, got {value!r}")
        converted = value
    else:
        try:
            converted = action.type(str(value))
        except (argparse.ArgumentTypeError, ValueError, TypeError) as error:
            if isinstance(error, argparse.ArgumentTypeError):
                raise UserError(f"{where}: {error}") from None
            raise UserError(f"{where}: expected {_wording(action)}, got {value!r}") from None
    if action.choices and converted not in action.choices:
        raise UserError(f"{where}: {converted!r} is not allowed{suggest(str(converted), list(map(str, action.choices)))}"
                        f" (allowed: {', '.join(map(str, action.choices))})")
    return converted


def _value(key: str, value: Any, action: argparse.Action, where: str) -> Any:
    if isinstance(action, argparse._StoreTrueAction):  # noqa: SLF001
        if not isinstance(value, bool):
            raise UserError(f"{where}: expected true or false, got {value!r}")
        return value
    if isinstance(action, argparse.BooleanOptionalAction):  # --x / --no-x; unset (None): the default
        if value == "auto":
            return None
        if not isinstance(value, bool):
            raise UserError(f"{where}: expected true, false or \"auto\", got {value!r}")
        return value
    if key == "dataset_options":
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a table such as {{ val_fraction = 0.2 }}, got {value!r}")
        for name, item in value.items():
            if isinstance(item, (dict, list)) or item is None:
                raise UserError(f"{where}.{name}: expected a number, string or boolean, got {item!r}")
        return [f"{name}={str(item).lower() if isinstance(item, bool) else item}" for name, item in value.items()]
    if key in _LISTS and isinstance(value, list):
        if not value or any(isinstance(v, (dict, list, bool)) for v in value):
            raise UserError(f"{where}: expected a non-empty list of {'names' if key == 'objectives' else 'integers'}, "
                            f"got {value!r}")
        if key == "seeds" and not all(isinstance(v, int) for v in value):
            raise UserError(f"{where}: expected a list of integer seeds, got {value!r}")
        value = _LISTS[key].join(str(v) for v in value)
    elif key == "seeds" and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if action.nargs in ("+", "*"):
        if not isinstance(value, list) or not value:
            raise UserError(f"{where}: expected a non-empty list, got {value!r}")
        return [_scalar(v, action, f"{where}[{i}]") for i, v in enumerate(value)]
    return _scalar(value, action, where)


def load_config(path: str | Path, command: str, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The options in the study file ``path`` for ``command``, as ``{dest: value}`` ready for
    ``parser.set_defaults``; raises :class:`UserError` naming the file and key on any problem."""
    path = Path(path)
    data = read_file(path)
    keys = option_keys(parser)
    declared = data.pop("command", None)
    if declared is not None and declared != command:
        raise UserError(f"--config {path}: this file is for `gsa-search {declared}`"
                        if declared in COMMANDS else
                        f"{path}: command = {declared!r} is not allowed (allowed: {', '.join(COMMANDS)})")
    out: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        if key not in keys:
            raise UserError(f"{path}: unknown key {raw_key!r}{suggest(key, list(keys))} for `gsa-search {command}` "
                            f"(allowed: command, {', '.join(sorted(keys))})")
        action = keys[key]
        out[action.dest] = _value(key, value, action, f"{path}: {key}")
        _check_name(key, out[action.dest], f"{path}: {key}")
    return out


def _known_names(key: str, value: Any) -> list[str] | None:
    """The allowed values of the options that take a name, for errors that name the file and key
    (the commands check them again, with the flag's name, for options given on the command line)."""
    from . import settings as S

    if key == "objectives":
        return list(S.OBJECTIVES)
    if key in ("sampler", "pruner", "backend"):
        return list({"sampler": S.SAMPLERS, "pruner": S.PRUNERS, "backend": S.BACKENDS}[key])
    if key == "dataset":
        from gsa_search.data import list_datasets

        return list_datasets()
    if key == "space" and ":" not in value:
        from search_spaces import list_spaces

        return list_spaces()
    if key == "spec" and not value.endswith((".toml", ".py")) and ":" not in value:
        from search_spaces.ablation import list_studies

        return list_studies()
    return None


def _check_name(key: str, value: Any, where: str) -> None:
    if not isinstance(value, str):
        return
    known = _known_names(key, value)
    if known is None:
        return
    for name in ([v.strip() for v in value.split(",")] if key == "objectives" else [value]):
        if name not in known:
            raise UserError(f"{where}: unknown {key.rstrip('s') if key == 'objectives' else key} {name!r}"
                            f"{suggest(name, known)} (allowed: {', '.join(known)})")


def resolved_config(args: argparse.Namespace, parser: argparse.ArgumentParser, command: str,
                    **resolved: Any) -> dict[str, Any]:
    """The parsed options of ``command`` as a study file (``None`` values left out; ``resolved``
    adds or replaces keys, e.g. the study name a default produced)."""
    from .cli import _option_value  # how --dataset-option reads a value; the file keeps its type

    out: dict[str, Any] = {"command": command}
    for key, action in option_keys(parser).items():
        value = getattr(args, action.dest, None)
        if key in resolved:
            value = resolved[key]
        if value is None or (isinstance(action, argparse._StoreTrueAction) and not value):  # noqa: SLF001
            continue
        if key == "dataset_options":
            pairs = [str(item).partition("=") for item in value]
            value = {name.replace("-", "_"): _option_value(text) for name, _, text in pairs}
            if not value:
                continue
        elif key in _LISTS and isinstance(value, (list, tuple)):
            value = list(value)
        elif key == "objectives":
            value = [part.strip() for part in str(value).split(",") if part.strip()]
        elif key == "seeds":
            text = str(value)
            value = [int(p) for p in text.split(",") if p.strip()] if "," in text else int(text)
        out[key] = value
    for key, value in resolved.items():
        if key not in out and value is not None:
            out[key] = value
    return out


def write_config(path: str | Path, config: Mapping[str, Any], *, header: str = "") -> Path:
    """Write ``config`` as TOML to ``path`` (atomically), with ``header`` as comment lines."""
    import tomli_w

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    comments = "".join(f"# {line}\n".replace("# \n", "#\n") for line in header.splitlines())
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(comments + tomli_w.dumps(dict(config)))
    tmp.replace(path)
    return path
