"""Layered configuration: configs/base.yaml <- scene yaml <- command line.

base.yaml is the schema: a key not declared there is an error, and every value is checked
against the type of its default (int may widen to float; a null default accepts any type;
a list default accepts a single value, which becomes a one-element list).
"""

from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path

import yaml
from addict import Dict

from utils.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]
BASE_CONFIG = REPO_ROOT / "configs" / "base.yaml"


_SCIENTIFIC = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + ":"))
        else:
            flat[name] = value
    return flat


def _read_yaml(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass an existing file to --config.")
    try:
        with open(path) as f:
            tree = yaml.safe_load(f)
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML ({err}).") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections and keys.")
    return tree


def _type_name(value) -> str:
    return "null" if value is None else type(value).__name__


def check_value(key: str, value, default, source: str):
    """Return `value` converted to the type of `default`, or raise ConfigError."""
    if isinstance(value, str) and _SCIENTIFIC.match(value):
        # YAML 1.1 reads "1e-3" (no dot) as a string; it is the number it looks like.
        value = float(value)
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
    elif isinstance(default, list):
        return list(value) if isinstance(value, (list, tuple)) else [value]
    raise ConfigError(
        f"{key} must be a {_type_name(default)} (default {default!r}) but {source} gives "
        f"{value!r} ({_type_name(value)})."
    )


def _unknown_key(key: str, known: list[str], source: str) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    # A misplaced key (right name, wrong section) is the commonest slip: suggest it too.
    leaf = key.split(":")[-1]
    close += [k for k in known if k.split(":")[-1] == leaf and k not in close]
    hint = f" Did you mean {', '.join(close[:3])}?" if close else ""
    return ConfigError(f"unknown config key '{key}' in {source}.{hint}")


def _apply(flat: dict, updates: dict, defaults: dict, source: str) -> None:
    for key, value in updates.items():
        if key not in defaults:
            raise _unknown_key(key, list(defaults), source)
        flat[key] = check_value(key, value, defaults[key], source)


def _unflatten(flat: dict) -> Dict:
    tree = Dict()
    for name, value in flat.items():
        node = tree
        *parents, leaf = name.split(":")
        for part in parents:
            node = node[part]
        node[leaf] = copy.deepcopy(value)
    return tree


def parse_overrides(args: list[str]) -> dict[str, object]:
    """Parse `--section:key value` and `--section.key=value` pairs; values are YAML."""
    overrides = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise ConfigError(
                f"unexpected argument '{arg}'; overrides look like --section:key value."
            )
        name = arg[2:]
        if "=" in name:
            name, text = name.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise ConfigError(f"option '{arg}' needs a value, e.g. {arg} 1000.")
            text = args[i + 1]
            i += 2
        name = name.replace(".", ":")
        try:
            overrides[name] = yaml.safe_load(text) if text != "" else None
        except yaml.YAMLError:
            overrides[name] = text
    return overrides


def load_config(config_file: str | Path | None, overrides: dict | None = None) -> Dict:
    """base.yaml <- config_file <- overrides (flat `section:key` names)."""
    defaults = _flatten(_read_yaml(BASE_CONFIG))
    flat = dict(defaults)
    if config_file is not None:
        path = Path(config_file)
        _apply(flat, _flatten(_read_yaml(path)), defaults, str(path))
    _apply(flat, overrides or {}, defaults, "the command line")
    return _unflatten(flat)


def load_saved_config(path: Path, overrides: dict | None = None) -> Dict:
    """Read an experiment's resolved config.yaml; it is checked against base.yaml too."""
    defaults = _flatten(_read_yaml(BASE_CONFIG))
    flat = dict(defaults)
    _apply(flat, _flatten(_read_yaml(path)), defaults, str(path))
    _apply(flat, overrides or {}, defaults, "the command line")
    return _unflatten(flat)


def to_yaml(cfg: Dict) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
