"""Layered configuration: configs/base.yaml <- the scene file's includes <- the scene file <-
command line.

base.yaml is the schema: a key not declared there is an error, and every value is checked
against the type of its default (int may widen to float; a null default accepts any type;
a list default accepts a single value, which becomes a one-element list), against the range
its comment declares (`n_rays: 1024  # [>= 1] rays per step`; see `Range`) and against the
values it allows (`encoding: frequency  # one of: frequency | grid; ...`; see schema_choices).

A scene file may start from recipes: `include: [recipes/grid_field.yaml]` applies those files
(each path relative to the including file, else to configs/; an included file may include
others) before the scene file's own keys, so a scene file holds only what differs. The
experiment's config.yaml is the merged result and needs no include to reload.
"""

from __future__ import annotations

import copy
import difflib
import functools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml
from addict import Dict

from utils.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "configs"
BASE_CONFIG = CONFIG_DIR / "base.yaml"
INCLUDE_KEY = "include"  # a loader directive, not a setting: never in the merged config


# Keys renamed since experiments were first written: a saved config.yaml is read under the new
# name; anywhere else the old name is an error that names the new one.
RENAMED_KEYS = {"cameras:focal_param": "cameras:focal_parameterisation"}

_SCIENTIFIC = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")
_KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_]\w*):(?P<rest>.*)$")
_BOUND = re.compile(r"^(?P<op>>=|>|<=|<)\s*(?P<number>\S+)$")
_CHOICES = re.compile(r"^\s*one of: (?P<names>[\w-]+(?: \| [\w-]+)*)\s*(?:;|$)")

# Values renamed since experiments were first written: a saved config.yaml is read with the new
# value; anywhere else the old value is an error that suggests the new one.
RENAMED_VALUES = {"cameras:focal_parameterisation": {"square": "squared", "ratio": "linear"}}


@dataclass(frozen=True)
class Range:
    """Allowed values of a number, declared at the start of its key's comment in base.yaml:
    `[>= a]`, `[> a]`, `[<= b]`, `[< b]`, two such bounds joined by a comma (`[> 0, <= 1]`), or
    a closed interval `[a, b]`."""

    text: str
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    @classmethod
    def parse(cls, spec: str) -> Range:
        parts = [part.strip() for part in spec.split(",")]
        try:
            if len(parts) == 2 and not any(_BOUND.match(part) for part in parts):
                return cls(f"in [{spec}]", float(parts[0]), float(parts[1]))
            bounds = {}
            for part in parts:
                m = _BOUND.match(part)
                if m is None or m["op"][0] in bounds or len(parts) > 2:
                    raise ValueError(part)
                bounds[m["op"][0]] = (float(m["number"]), m["op"] in (">", "<"))
        except ValueError:
            raise ValueError(f"malformed range [{spec}]") from None
        low, low_open = bounds.get(">", (-math.inf, False))
        high, high_open = bounds.get("<", (math.inf, False))
        return cls(" and ".join(parts), low, high, low_open, high_open)

    def __contains__(self, x: float) -> bool:
        above = x > self.low if self.low_open else x >= self.low
        below = x < self.high if self.high_open else x <= self.high
        return above and below


def _key_comments(base: Path):
    """(`section:key`, comment) of every key with a value in base.yaml, in file order."""
    parents = []  # (indent, name) of the enclosing sections
    for line in Path(base).read_text().splitlines():
        m = _KEY_LINE.match(line)
        if m is None:
            continue
        indent = len(m["indent"])
        while parents and parents[-1][0] >= indent:
            parents.pop()
        value, _, comment = m["rest"].partition(" #")
        if not value.strip():
            parents.append((indent, m["key"]))
            continue
        yield ":".join([p for _, p in parents] + [m["key"]]), comment


@functools.cache
def schema_ranges(base: Path = BASE_CONFIG) -> dict[str, Range]:
    """{`section:key`: Range} for every key whose comment in base.yaml opens with a range."""
    ranges = {}
    for name, comment in _key_comments(base):
        marker = re.match(r"^\s*\[([^\]]*)\]", comment)
        if marker:
            try:
                ranges[name] = Range.parse(marker[1])
            except ValueError as err:
                raise ValueError(f"{base}: {name} declares a {err}") from None
    return ranges


@functools.cache
def schema_choices(base: Path = BASE_CONFIG) -> dict[str, tuple[str, ...]]:
    """{`section:key`: allowed values} for every key whose comment in base.yaml opens with
    `one of: a | b | c` (ended by `;` or the comment's end); a list key's elements are each
    one of them."""
    choices = {}
    for name, comment in _key_comments(base):
        if not re.match(r"^\s*one of:", comment):
            continue
        m = _CHOICES.match(comment)
        if m is None:
            raise ValueError(
                f"{base}: {name} declares malformed choices ({comment.strip()[:60]}); write "
                "`one of: a | b | c; what they mean`."
            )
        choices[name] = tuple(m["names"].split(" | "))
    return choices


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
    if path.is_dir():
        examples = sorted(p.name for p in path.glob("*.yaml") if p.name != BASE_CONFIG.name)[:3]
        hint = ", ".join(str(path / name) for name in examples) or "configs/demo.yaml"
        raise ConfigError(f"config file {path} is a folder; pass one yaml file, e.g. {hint}.")
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


def _show(value) -> str:
    return "null" if value is None else repr(value)


def check_range(key: str, value, default, source: str) -> None:
    """Raise ConfigError when `value` lies outside the range base.yaml declares for `key`.

    A list is checked element by element; null passes only where the default is null (there it
    means "off" or "derive it"); a ranged key takes numbers only."""
    allowed = schema_ranges().get(key)
    if allowed is None or (value is None and default is None):
        return
    items = value if isinstance(value, list) else [value]
    numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in items)
    if not numbers or not all(x in allowed for x in items):
        what = allowed.text if numbers else f"a number {allowed.text}"
        each = " (each element)" if isinstance(value, list) else ""
        raise ConfigError(f"{key} must be {what}{each} but {source} gives {_show(value)}.")


def check_choice(key: str, value, source: str) -> None:
    """Raise ConfigError when `value` (each element of a list) is not one of the values
    base.yaml declares for `key`; the sentence suggests the closest allowed value."""
    allowed = schema_choices().get(key)
    if allowed is None:
        return
    items = value if isinstance(value, list) else [value]
    wrong = [x for x in items if x not in allowed]
    if not wrong:
        return
    each = " (each element)" if isinstance(value, list) else ""
    close = None
    if isinstance(wrong[0], str):
        close = RENAMED_VALUES.get(key, {}).get(wrong[0])
        lower = {a.lower(): a for a in allowed}
        match = difflib.get_close_matches(wrong[0].lower(), list(lower), n=1, cutoff=0.6)
        close = close or (lower[match[0]] if match else None)
    hint = f"; did you mean {close}?" if close else "."
    raise ConfigError(
        f"{key} must be one of {' | '.join(allowed)}{each} but {source} gives {_show(value)}{hint}"
    )


def check_expname(value, source: str) -> None:
    """An experiment name is one folder under log_root, so that it can never name (and
    overwrite) log_root itself, a parent of it, or a folder elsewhere."""
    name = value if isinstance(value, str) else ""
    # Every absolute path holds a separator, so refusing separators refuses those too.
    if name in ("", ".", "..") or "/" in name or "\\" in name:
        raise ConfigError(
            f"expname must be one folder name under log_root (not empty, '.' or '..', no '/' "
            f"or '\\') but {source} gives {_show(value)}; pass e.g. --expname fern_run."
        )


def _unknown_key(key: str, known: list[str], source: str) -> ConfigError:
    if key in RENAMED_KEYS:
        return ConfigError(f"config key '{key}' in {source} is now '{RENAMED_KEYS[key]}'.")
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
        value = check_value(key, value, defaults[key], source)
        check_range(key, value, defaults[key], source)
        check_choice(key, value, source)
        if key == "expname":
            check_expname(value, source)
        flat[key] = value


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


def _include_path(name, chain: list[Path]) -> Path:
    """The file an include of chain[-1] names: relative to that file's folder, else to
    configs/."""
    via = " -> ".join(str(p) for p in chain)
    if not isinstance(name, str) or not name:
        raise ConfigError(
            f"config file {via} has include {name!r}; include takes a yaml path or a list of "
            "them, e.g. include: [recipes/grid_field.yaml]."
        )
    candidates = [chain[-1].parent / name]
    if (CONFIG_DIR / name).resolve() != candidates[0].resolve():
        candidates.append(CONFIG_DIR / name)
    for path in candidates:
        if path.is_file():
            return path
    tried = " or ".join(str(p) for p in candidates)
    raise ConfigError(
        f"config file {via} includes {name}, which is not a file (looked for {tried}); fix the "
        "include path."
    )


def config_layers(config_file: str | Path) -> list[tuple[Path, dict[str, object]]]:
    """[(file, its own flat `section:key` settings)] in the order they apply: each include (its
    own includes first), then the file itself. A file included twice (through two recipes)
    applies once, where it first appears; a cycle is refused."""
    layers: list[tuple[Path, dict]] = []
    applied: set[Path] = set()

    def visit(path: Path, chain: list[Path]) -> None:
        key = path.resolve()
        if key in (p.resolve() for p in chain):
            cycle = " -> ".join(str(p) for p in [*chain, path])
            raise ConfigError(f"config includes form a cycle ({cycle}); remove one include.")
        if key in applied:
            return
        tree = _read_yaml(path)
        names = tree.pop(INCLUDE_KEY, None)
        if names is None:
            names = []
        elif not isinstance(names, list):
            names = [names]
        for name in names:
            visit(_include_path(name, [*chain, path]), [*chain, path])
        applied.add(key)
        layers.append((path, _flatten(tree)))

    visit(Path(config_file), [])
    return layers


def load_config(config_file: str | Path | None, overrides: dict | None = None) -> Dict:
    """base.yaml <- config_file's includes <- config_file <- overrides (flat `section:key`
    names)."""
    defaults = _flatten(_read_yaml(BASE_CONFIG))
    flat = dict(defaults)
    if config_file is not None:
        for path, settings in config_layers(config_file):
            _apply(flat, settings, defaults, str(path))
    _apply(flat, overrides or {}, defaults, "the command line")
    return _unflatten(flat)


def load_saved_config(path: Path, overrides: dict | None = None) -> Dict:
    """Read an experiment's resolved config.yaml; it is checked against base.yaml too."""
    defaults = _flatten(_read_yaml(BASE_CONFIG))
    flat = dict(defaults)
    saved = {RENAMED_KEYS.get(k, k): v for k, v in _flatten(_read_yaml(path)).items()}
    for key, renamed in RENAMED_VALUES.items():
        if isinstance(saved.get(key), str):
            saved[key] = renamed.get(saved[key], saved[key])
    _apply(flat, saved, defaults, str(path))
    _apply(flat, overrides or {}, defaults, "the command line")
    return _unflatten(flat)


def require_keys(section: Mapping, keys, name: str) -> dict:
    """{key: section[key]} for `keys`; a section that lacks one is a caller's bug (pass the
    section utils.config.load_config gives: base.yaml declares every key)."""
    missing = [key for key in keys if key not in section]
    if missing:
        raise ValueError(
            f"the {name} settings lack {', '.join(missing)}; pass the {name} section of "
            "utils.config.load_config (base.yaml declares every key)."
        )
    return {key: section[key] for key in keys}


def to_yaml(cfg: Dict) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
