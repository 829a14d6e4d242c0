"""Config layering and the errors a user meets when a config is wrong."""

import re
from pathlib import Path

import pytest
import yaml

from utils.config import (
    BASE_CONFIG,
    CONFIG_DIR,
    Range,
    config_layers,
    load_config,
    load_saved_config,
    parse_overrides,
    schema_choices,
    schema_ranges,
    to_yaml,
)
from utils.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO / ".." / "shared" / "data"


def test_layering_base_scene_command_line(tmp_path):
    scene = tmp_path / "scene.yaml"
    scene.write_text("expname: fern_run\ntraining:\n  num_iters: 500\n  lr_field: 0.01\n")
    cfg = load_config(
        scene, parse_overrides(["--training:num_iters", "20", "--model.net_width=64"])
    )
    assert cfg.expname == "fern_run"  # scene file over base
    assert cfg.training.num_iters == 20  # command line over scene file
    assert cfg.training.lr_field == 0.01
    assert cfg.model.net_width == 64
    assert cfg.model.net_depth == 4  # untouched base default


def test_int_widens_to_float_and_scientific_strings_are_numbers():
    cfg = load_config(
        None, parse_overrides(["--training:lr_field", "1", "--cameras:lr_pose", "1e-3"])
    )
    assert isinstance(cfg.training.lr_field, float) and cfg.training.lr_field == 1.0
    assert cfg.cameras.lr_pose == pytest.approx(1e-3)


def test_list_keys_accept_a_single_value_and_null_defaults_accept_anything():
    cfg = load_config(
        None,
        parse_overrides(
            ["--training:ckpt_only_use_keys", "cam_param", "--data:train_views", "[25, 22, 28]"]
        ),
    )
    assert cfg.training.ckpt_only_use_keys == ["cam_param"]
    assert cfg.data.train_views == [25, 22, 28]


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--training:num_iter", "5"], "Did you mean training:num_iters"),
        (["--num_iters", "5"], "training:num_iters"),
        (["--training:num_iters", "five"], "training:num_iters must be a int"),
        (["--training:overwrite", "maybe"], "training:overwrite must be a bool"),
        (["--training:num_iters"], "needs a value"),
    ],
)
def test_bad_overrides_name_the_key(args, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(None, parse_overrides(args))


def test_bad_scene_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "scene.yaml").write_text("expname: x\n")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path)  # a folder: say so, and name a file in it
    assert str(err.value) == (
        f"config file {tmp_path} is a folder; pass one yaml file, e.g. {tmp_path / 'scene.yaml'}."
    )
    typo = tmp_path / "typo.yaml"
    typo.write_text("model:\n  net_widht: 64\n")
    with pytest.raises(ConfigError, match="model:net_width"):
        load_config(typo)
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)


KEY_LINE = re.compile(r"^(\s*)([A-Za-z_]\w*):(.*)$")


def _comment(rest: str) -> str | None:
    """The comment after a key's value (YAML: a '#' at the start or after a space, outside
    quotes); None without one."""
    quote = None
    for i, ch in enumerate(rest):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or rest[i - 1].isspace()):
            return rest[i + 1 :].strip()
    return None


def keys_without_comment(text: str) -> list[str]:
    """The settings (section:key, as _flat names them) of a schema file whose own line carries
    no comment of at least two words: a bare '#', a '#' inside a quoted value or a setting
    written over several lines do not count."""
    comments, path = {}, []
    for line in text.splitlines():
        match = KEY_LINE.match(line)
        if not match:
            continue
        indent, key, rest = len(match[1]), match[2], match[3]
        path = [(i, k) for i, k in path if i < indent] + [(indent, key)]
        comments[":".join(k for _, k in path)] = _comment(rest)
    return [
        key for key in _flat(yaml.safe_load(text)) if len((comments.get(key) or "").split()) < 2
    ]


def test_the_comment_check_reads_comments_as_yaml_does():
    text = (
        "# header\n"
        "a: 1            # a reason\n"
        "b: 'x # y'\n"
        'c: "x#y"        #\n'
        "d: 2\n"
        "e: x#glued, part of the value\n"
        "sect:           # a section\n"
        "  f: 3          # a nested reason\n"
        "  g: 4\n"
        "h:\n"
        "  - 1\n"
    )
    assert keys_without_comment(text) == ["b", "c", "d", "e", "sect:g", "h"]


def test_every_base_key_has_a_comment():
    missing = keys_without_comment(BASE_CONFIG.read_text())
    assert not missing, f"base.yaml keys without a comment: {missing}"


def _flat(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}:"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@pytest.mark.parametrize("path", sorted(BASE_CONFIG.parent.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    """Each yaml's every value reaches the loaded config (none dropped, renamed or clipped), its
    experiment is named after the file (two recipes never share a directory), and the data it
    names is where it says (skipped where the shared data set is absent)."""
    cfg = load_config(path)
    loaded = _flat(cfg.to_dict())
    written = _flat(yaml.safe_load(path.read_text()))
    written.pop("include", None)  # a loader directive, not a setting
    assert written, f"{path.name} sets nothing"
    for key, value in written.items():
        assert key in loaded and loaded[key] == value, (key, value, loaded.get(key))
    if path != BASE_CONFIG:
        assert cfg.expname == path.stem
    data_dir = cfg.data.data_dir
    if data_dir is None:
        assert cfg.data.type in ("demo", "folder")  # demo: generated; folder: the user's photos
        return
    data = REPO / data_dir
    if not data.exists() and not SHARED_DATA.is_dir():
        pytest.skip(f"{path.name} reads {data_dir}, and ../shared/data is absent here")
    assert data.is_dir(), f"{path.name}: data.data_dir {data_dir} does not exist"
    assert any(data.iterdir()), f"{path.name}: data.data_dir {data_dir} is empty"


# ------------------------------------------------ scene files: short diffs on base and recipes

SCENE_FILES = sorted(p for p in CONFIG_DIR.glob("*.yaml") if p != BASE_CONFIG)
RECIPES = sorted((CONFIG_DIR / "recipes").glob("*.yaml"))
MAX_SETTING_LINES = 15


def _setting_lines(path: Path) -> list[str]:
    """The lines that set something: not blank, not a comment, not a bare section header."""
    return [
        line
        for line in path.read_text().splitlines()
        if line.strip()
        and not line.lstrip().startswith("#")
        and not re.match(r"^\s*\w+:\s*(#.*)?$", line)
    ]


@pytest.mark.parametrize(
    "path", SCENE_FILES + RECIPES, ids=lambda p: str(p.relative_to(CONFIG_DIR))
)
def test_no_key_repeats_what_the_file_inherits(path):
    """A scene file or recipe sets only what differs from base.yaml and its includes: a repeated
    default hides which settings the scene really chooses, and outlives a change of the default."""
    *included, (_, own) = config_layers(path)
    inherited = _flat(
        load_config(None, {k: v for _, keys in included for k, v in keys.items()}).to_dict()
    )
    merged = _flat(load_config(path).to_dict())
    repeated = [key for key in own if merged[key] == inherited[key]]
    assert not repeated, f"{path.name} sets what it inherits already: {', '.join(repeated)}"


@pytest.mark.parametrize("path", SCENE_FILES, ids=lambda p: p.name)
def test_every_scene_file_is_a_short_diff(path):
    lines = _setting_lines(path)
    assert len(lines) <= MAX_SETTING_LINES, (path.name, len(lines), lines)


def test_every_recipe_is_used_by_a_scene_file():
    assert RECIPES, "configs/recipes/ holds no recipe"
    used = {layer.resolve() for scene in SCENE_FILES for layer, _ in config_layers(scene)}
    assert not [r.name for r in RECIPES if r.resolve() not in used]


def test_config_comments_say_why_not_what_was_measured():
    """Results live in docs/ (written by the bench scripts), not in the configs' comments."""
    measured = re.compile(r"\d(\.\d+)? ?(dB|deg|degrees|s|min|minutes|seconds|ms|GiB)\b|README")
    for path in sorted(CONFIG_DIR.rglob("*.yaml")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            comment = line.partition("#")[2]
            assert not measured.search(comment), f"{path.name}:{number}: {comment.strip()}"


def test_scientific_notation_is_a_number_for_untyped_keys_too():
    cfg = load_config(None, parse_overrides(["--cameras:lr_translation", "3e-4"]))
    assert cfg.cameras.lr_translation == pytest.approx(3e-4)
    with pytest.raises(ConfigError, match="expname must be a str"):
        load_config(None, parse_overrides(["--expname", "1e5"]))


# ------------------------------------------------------------------ includes (recipes)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_includes_apply_in_order_before_the_scene_file_and_the_command_line(tmp_path):
    _write(tmp_path / "recipes" / "steps.yaml", "training:\n  num_iters: 200\n  lr_field: 0.01\n")
    field = _write(
        tmp_path / "recipes" / "field.yaml",
        "include: steps.yaml\nmodel:\n  net_width: 64\n  net_depth: 2\ntraining:\n"
        "  num_iters: 300\n",
    )
    _write(tmp_path / "longer.yaml", "training:\n  num_iters: 400\n  n_rays: 512\n")
    scene = _write(
        tmp_path / "scene.yaml",
        "include: [recipes/field.yaml, longer.yaml]\nexpname: scene\nmodel:\n  net_depth: 3\n",
    )
    assert load_config(field).training.num_iters == 300  # a file over what it includes
    cfg = load_config(scene, {"model:net_width": 32})
    assert cfg.training.lr_field == 0.01  # an include's include (nested)
    assert cfg.training.num_iters == 400 and cfg.training.n_rays == 512  # a later include wins
    assert cfg.model.net_depth == 3  # the scene file over its includes
    assert cfg.model.net_width == 32  # the command line over everything
    assert cfg.expname == "scene" and "include" not in cfg


def test_an_include_is_found_next_to_the_including_file_else_under_configs(tmp_path, monkeypatch):
    import utils.config

    configs = tmp_path / "configs"
    monkeypatch.setattr(utils.config, "CONFIG_DIR", configs)
    _write(configs / "recipes" / "wide.yaml", "model:\n  net_width: 256\n")
    mine = _write(tmp_path / "home" / "mine.yaml", "include: [recipes/wide.yaml]\n")
    assert load_config(mine).model.net_width == 256  # under configs/
    _write(tmp_path / "home" / "recipes" / "wide.yaml", "model:\n  net_width: 16\n")
    assert load_config(mine).model.net_width == 16  # next to the file first


def test_a_file_included_twice_applies_once_where_it_first_appears(tmp_path):
    _write(tmp_path / "g.yaml", "model:\n  net_width: 64\n  net_depth: 2\n")
    _write(tmp_path / "a.yaml", "include: g.yaml\nmodel:\n  net_width: 32\n")
    _write(tmp_path / "b.yaml", "include: g.yaml\ntraining:\n  n_rays: 256\n")
    cfg = load_config(_write(tmp_path / "d.yaml", "include: [a.yaml, b.yaml]\n"))
    assert cfg.model.net_width == 32  # g applied again through b would undo a's width
    assert cfg.model.net_depth == 2 and cfg.training.n_rays == 256


def test_include_cycles_missing_files_and_bad_values_are_one_sentence(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    _write(a, "include: [b.yaml]\n")
    _write(b, "include: [a.yaml]\n")
    with pytest.raises(ConfigError) as err:
        load_config(a)
    assert (
        str(err.value) == f"config includes form a cycle ({a} -> {b} -> {a}); remove one include."
    )
    _write(a, "include: [a.yaml]\n")
    with pytest.raises(ConfigError, match="form a cycle"):
        load_config(a)
    _write(a, "include: [b.yaml]\n")
    _write(b, "include: [recipes/nope.yaml]\n")
    with pytest.raises(ConfigError) as err:
        load_config(a)
    message = str(err.value)
    assert message.startswith(f"config file {a} -> {b} includes recipes/nope.yaml, which is not a")
    assert str(tmp_path / "recipes" / "nope.yaml") in message and "\n" not in message
    _write(b, "include: {model: 1}\n")
    with pytest.raises(ConfigError, match="include takes a yaml path or a list of them"):
        load_config(a)


def test_keys_of_an_included_file_are_checked_and_named_with_it(tmp_path):
    recipe = _write(tmp_path / "recipe.yaml", "model:\n  net_widht: 64\n")
    scene = _write(tmp_path / "scene.yaml", "include: recipe.yaml\n")
    with pytest.raises(ConfigError, match=f"'model:net_widht' in {recipe}. Did you mean"):
        load_config(scene)
    _write(recipe, "training:\n  n_rays: 0\n")
    with pytest.raises(ConfigError, match=f"training:n_rays must be >= 1 but {recipe} gives 0"):
        load_config(scene)


def test_the_saved_config_is_merged_and_reloads_without_its_includes(tmp_path):
    _write(tmp_path / "recipe.yaml", "model:\n  net_width: 64\n")
    scene = _write(tmp_path / "scene.yaml", "include: [recipe.yaml]\ntraining:\n  n_rays: 256\n")
    saved = tmp_path / "exp" / "config.yaml"
    _write(saved, to_yaml(load_config(scene)))
    assert "include" not in yaml.safe_load(saved.read_text())
    (tmp_path / "recipe.yaml").unlink()  # the experiment does not need its recipes any more
    merged = load_config(None, {"model:net_width": 64, "training:n_rays": 256})
    assert load_saved_config(saved).to_dict() == merged.to_dict()


def test_train_with_a_folder_for_config_names_a_file_in_it(tiny_args, tmp_path, capsys):
    import train

    args = list(tiny_args)
    i = args.index("--config")
    args[i + 1] = str(REPO / "configs")
    assert train.main(args) == 2
    err = capsys.readouterr().err
    assert f"config file {REPO / 'configs'} is a folder; pass one yaml file, e.g. " in err
    assert str(REPO / "configs" / "demo.yaml") in err and err.count("\n") == 1


# ------------------------------------------------------------------ ranges declared in base.yaml


def test_range_declarations_parse():
    closed = Range.parse("0, 1")
    assert 0 in closed and 1 in closed and 0.5 in closed and -0.01 not in closed
    assert 1.01 not in closed and float("nan") not in closed
    half_open = Range.parse("> 0, <= 1")
    assert 0 not in half_open and 1e-12 in half_open and 1 in half_open and 1.5 not in half_open
    assert 1 in Range.parse(">= 1") and 0 not in Range.parse(">= 1")
    assert 4.9 in Range.parse("< 5") and 5 not in Range.parse("< 5")
    assert Range.parse("> 0, <= 1").text == "> 0 and <= 1" and closed.text == "in [0, 1]"
    for bad in (">= x", "=> 1", ">= 1, >= 2", "0, 1, 2", ""):
        with pytest.raises(ValueError, match="malformed range"):
            Range.parse(bad)


def test_ranges_are_read_from_key_comments_in_their_section(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(
        "# header [>= 1] is no declaration\n"
        "top: 3           # [>= 0] a top-level count\n"
        "plain: 3         # no range\n"
        "outer:           # [0, 1] a section comment is no declaration\n"
        "  frac: 0.5      # [0, 1] a fraction, e.g. [0.2, 0.3]\n"
        "  sizes: [8, 8]  # [>= 8] each element\n"
        "  note: 1        # lr, e.g. [>= 9] later in the comment is no declaration\n"
        "after: 1.0       # [> 0] back at the top level\n"
    )
    ranges = schema_ranges(base)
    assert set(ranges) == {"top", "outer:frac", "outer:sizes", "after"}
    assert ranges["outer:frac"].text == "in [0, 1]" and ranges["after"].text == "> 0"


def test_every_base_default_lies_in_its_range():
    ranges = schema_ranges()
    defaults = _flat(yaml.safe_load(BASE_CONFIG.read_text()))
    assert set(ranges) <= set(defaults)
    for key, allowed in ranges.items():
        value = defaults[key]
        for x in value if isinstance(value, list) else [value]:
            assert x is None or x in allowed, (key, value, allowed.text)


@pytest.mark.parametrize(
    "key, text",
    [
        ("training:n_rays", ">= 1"),
        ("model:n_samples", ">= 1"),
        ("num_threads", ">= 0"),
        ("training:num_iters", ">= 0"),
        ("training:pretrain_iters", ">= 0"),
        ("tracks:ba_iters", ">= 0"),
        ("data:demo_size", ">= 8"),
        ("model:net_width", ">= 1"),
        ("model:chunk", ">= 1"),
        ("training:lr_field", ">= 0"),
        ("cameras:lr_pose", ">= 0"),
        ("cameras:lr_decay_rate", "> 0"),
        ("cameras:freeze_after", "in [0, 1]"),
        ("tracks:start", "in [0, 1]"),
        ("model:barf_c2f", "in [0, 1]"),
        ("render:depth_percentiles", "in [0, 100]"),
        ("smoothness:patch_size", ">= 2"),
        ("training:pose_history_max", ">= 2"),
    ],
)
def test_base_yaml_declares_the_obvious_ranges(key, text):
    assert schema_ranges()[key].text == text


@pytest.mark.parametrize(
    "key, bad, boundary",
    [
        ("training:n_rays", 0, 1),
        ("model:n_samples", 0, 1),
        ("num_threads", -1, 0),
        ("training:num_iters", -5, 0),
        ("training:ckpt_every", -1, 0),
        ("training:lr_field", -1e-3, 0.0),
        ("cameras:lr_decay_rate", 0.0, 1e-9),
        ("cameras:lr_decay_steps", 0, 1),
        ("tracks:stop", 1.01, 1.0),
        ("tracks:start", -0.1, 0.0),
        ("smoothness:patch_size", 1, 2),
        ("eval:max_views", 0, 1),
        ("data:demo_size", [96, 4], [8, 8]),
        ("model:barf_c2f", [0.1, 1.5], [0.0, 1.0]),
        ("render:depth_percentiles", [-1.0, 98.0], [0.0, 100.0]),
        ("data:max_images", "many", None),  # a ranged key takes numbers; null = all images
        ("model:n_samples", None, 1),  # null only where the default is null
    ],
)
def test_out_of_range_values_name_key_value_and_range(key, bad, boundary):
    with pytest.raises(ConfigError) as err:
        load_config(None, {key: bad})
    message = str(err.value)
    shown = "null" if bad is None else repr(bad)
    assert message.startswith(f"{key} must be ") and schema_ranges()[key].text in message
    assert f"gives {shown}." in message and "\n" not in message
    section, _, leaf = key.rpartition(":")
    cfg = load_config(None, {key: boundary})
    assert (cfg[section][leaf] if section else cfg[leaf]) == boundary


def test_ranges_are_checked_in_scene_files_and_saved_configs(tmp_path):
    scene = tmp_path / "scene.yaml"
    scene.write_text("training:\n  n_rays: 0\n")
    with pytest.raises(ConfigError, match=rf"training:n_rays must be >= 1 but {scene} gives 0"):
        load_config(scene)
    saved = tmp_path / "config.yaml"
    cfg = load_config(None)
    cfg.model.n_samples = -3
    saved.write_text(to_yaml(cfg))
    with pytest.raises(ConfigError, match=rf"model:n_samples must be >= 1 but {saved} gives -3"):
        load_saved_config(saved)
    cfg.model.n_samples = 64
    saved.write_text(to_yaml(cfg))
    with pytest.raises(ConfigError, match="num_threads must be >= 0 but the command line"):
        load_saved_config(saved, {"num_threads": -1})


@pytest.mark.parametrize("name", ["", None, ".", "..", "a/b", "/tmp/x", "..\\up", "C:\\runs"])
def test_expname_must_be_one_folder_name(name):
    with pytest.raises(ConfigError, match="expname must be one folder name under log_root"):
        load_config(None, {"expname": name})


@pytest.mark.parametrize("name", ["fern_run", "run.2", "..x", "a b"])
def test_expname_boundary_names_pass(name):
    assert load_config(None, {"expname": name}).expname == name


# --------------------------------------------- end to end: refused before anything is written


@pytest.mark.parametrize(
    "extra",
    [
        ["--training:n_rays", "0"],
        ["--model:n_samples", "0"],
        ["--num_threads", "-1"],
        ["--expname", ""],
        ["--expname", ".."],
        ["--expname", "."],
        ["--expname", "/tmp/x"],
        ["--training:num_iters", "-5"],
        ["--expname", "..", "--training:overwrite", "true"],
    ],
)
def test_train_refuses_bad_values_with_exit_2_and_writes_nothing(
    tiny_args, tmp_path, capsys, extra
):
    import train

    log_root = tmp_path / "logs"
    assert train.main(tiny_args + extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert not log_root.exists() or not any(log_root.iterdir())
    assert not (tmp_path / "demo_scene").exists()  # refused before the scene is even read


def test_expname_naming_an_existing_file_exits_2(tiny_args, tmp_path, capsys):
    import train

    (tmp_path / "logs").mkdir()
    taken = tmp_path / "logs" / "notes"
    taken.write_text("not an experiment")
    for extra in ([], ["--training:overwrite", "true"]):
        assert train.main(tiny_args + ["--expname", "notes", *extra]) == 2
        assert "is not a directory" in capsys.readouterr().err
        assert taken.read_text() == "not an experiment"


def test_overwrite_refuses_a_directory_that_is_not_an_experiment(tiny_args, tmp_path, capsys):
    import train

    precious = tmp_path / "logs" / "photos"
    precious.mkdir(parents=True)
    (precious / "holiday.jpg").write_bytes(b"jpeg")
    args = tiny_args + ["--expname", "photos", "--training:overwrite", "true"]
    assert train.main(args) == 2
    assert "not an experiment directory" in capsys.readouterr().err
    assert sorted(p.name for p in precious.iterdir()) == ["holiday.jpg"]


def test_overwrite_replaces_a_real_experiment(tiny_args, tmp_path):
    import train

    args = tiny_args + ["--training:num_iters", "1", "--training:overwrite", "true"]
    exp = tmp_path / "logs" / "demo"
    exp.mkdir(parents=True)
    (exp / "config.yaml").write_text(to_yaml(load_config(None)))
    (exp / "stale.txt").write_text("from the old run")
    assert train.main(args) == 0
    assert not (exp / "stale.txt").exists() and (exp / "ckpts" / "final.pt").is_file()
    assert load_saved_config(exp / "config.yaml").training.num_iters == 1


def test_exp_dir_guard_before_anything_is_removed(tmp_path):
    from engine.experiment import check_new_exp_dir, create_exp_dir

    exp = tmp_path / "logs" / "run"
    create_exp_dir(exp, overwrite=False)  # missing: created
    assert exp.is_dir()
    check_new_exp_dir(exp, overwrite=False)  # empty: free
    (exp / "config.yaml").write_text("expname: run\n")
    (exp / "ckpts").mkdir()
    (exp / "ckpts" / "latest.pt").write_bytes(b"trained")
    with pytest.raises(ConfigError, match="already exists"):
        create_exp_dir(exp, overwrite=False)
    create_exp_dir(exp, overwrite=True)  # an experiment: replaced by an empty directory
    assert exp.is_dir() and not any(exp.iterdir())
    (exp / "data.txt").write_text("keep")
    with pytest.raises(ConfigError, match="not an experiment directory"):
        create_exp_dir(exp, overwrite=True)
    assert (exp / "data.txt").read_text() == "keep"
    link = tmp_path / "logs" / "link"
    link.symlink_to(tmp_path / "elsewhere")  # dangling: mkdir would fail with a traceback
    with pytest.raises(ConfigError, match="is not a directory"):
        check_new_exp_dir(link, overwrite=True)
    (tmp_path / "file_root").write_text("x")
    with pytest.raises(ConfigError, match="file_root exists and is not a directory"):
        check_new_exp_dir(tmp_path / "file_root" / "run", overwrite=False)


def test_an_experiment_whose_set_up_never_finished_is_started_again(tmp_path):
    from engine.experiment import check_new_exp_dir, create_exp_dir

    exp = tmp_path / "logs" / "run"
    (exp / "ckpts").mkdir(parents=True)
    (exp / "config.yaml").write_text("expname: run\n")
    (exp / "sfm").mkdir()
    (exp / "sfm" / "candidates.json").write_text("{}")
    (exp / "tracks").mkdir()
    (exp / "tracks" / "features-1.db").write_bytes(b"sift")
    check_new_exp_dir(exp, overwrite=False)  # no checkpoint: nothing trained to protect
    create_exp_dir(exp, overwrite=False)
    assert sorted(p.name for p in exp.iterdir()) == ["tracks"]  # the feature cache stays
    assert (exp / "tracks" / "features-1.db").read_bytes() == b"sift"
    (exp / "config.yaml").write_text("expname: run\n")
    (exp / "ckpts").mkdir()
    (exp / "ckpts" / "final.pt").write_bytes(b"trained")  # any checkpoint: refused again
    with pytest.raises(ConfigError, match="already exists"):
        check_new_exp_dir(exp, overwrite=False)


def test_a_renamed_key_is_read_from_saved_configs_and_named_elsewhere(tmp_path):
    saved = tmp_path / "config.yaml"
    saved.write_text("cameras:\n  focal_param: square\n")
    cfg = load_saved_config(saved)
    assert cfg.cameras.focal_parameterisation == "squared"  # old key and old value, read as new
    saved.write_text("cameras:\n  focal_parameterisation: ratio\n")
    assert load_saved_config(saved).cameras.focal_parameterisation == "linear"
    with pytest.raises(ConfigError, match="now 'cameras:focal_parameterisation'"):
        load_config(None, {"cameras:focal_param": "squared"})
    with pytest.raises(ConfigError, match="gives 'ratio'; did you mean linear\\?$"):
        load_config(None, {"cameras:focal_parameterisation": "ratio"})


# ------------------------------------------------------------ choices declared in base.yaml


def test_choice_declarations_are_read_from_key_comments(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(
        "# one of: a | b  (the header is no declaration)\n"
        "kind: a          # one of: a | b-c | d_e; what they mean: a | b\n"
        "plain: x         # x | y without the marker is no declaration\n"
        "outer:\n"
        "  videos: [p]    # one of: p | q\n"
        "  later: z       # z, or one of: z | w later in the comment is none\n"
    )
    assert schema_choices(base) == {"kind": ("a", "b-c", "d_e"), "outer:videos": ("p", "q")}
    for i, bad in enumerate(("one of: a, b", "one of: a |", "one of:")):
        broken = tmp_path / f"broken{i}.yaml"  # schema_choices caches per path
        broken.write_text(f"kind: a  # {bad}\n")
        with pytest.raises(ValueError, match="kind declares malformed choices"):
            schema_choices(broken)


DECLARED_CHOICES = {
    "data:type": "demo | llff | dtu | folder | transforms | colmap",
    "model:framework": "NeRF | SirenNeRF",
    "model:encoding": "frequency | grid",
    "model:ray_space": "auto | ndc | euclidean",
    "cameras:init": "auto | identity | gt | noisy_gt | colmap",
    "cameras:so3_representation": "axis-angle | quaternion | rotation6D",
    "cameras:focal_init": "default | gt",
    "cameras:focal_mode": "shared | per_image",
    "cameras:focal_parameterisation": "squared | linear | exp",
    "training:rays_from": "all | one",
    "training:autocast": "auto | none | bf16",
    "tracks:resolution": "highest | training",
    "tracks:ba_solver": "ceres | lbfgs",
    "tracks:late_kernel": "none | cauchy | gate",
    "eval:alignment": "rotation-aware | centre-only | pairwise",
    "eval:tto_pixels": "auto | all | mask",
    "render:render_type": "auto | spiral | orbit | interpolate | path",
    "render:videos": "rgb | depth | rgb_depth",
}


def test_base_yaml_declares_every_fixed_string_choice_once_with_its_default():
    declared = schema_choices()
    assert {k: " | ".join(v) for k, v in declared.items()} == DECLARED_CHOICES
    defaults = _flat(yaml.safe_load(BASE_CONFIG.read_text()))
    for key, allowed in declared.items():
        value = defaults[key]
        assert all(x in allowed for x in (value if isinstance(value, list) else [value])), key


@pytest.mark.parametrize("key", sorted(DECLARED_CHOICES))
def test_every_declared_choice_loads(key):
    section, _, leaf = key.rpartition(":")
    for value in schema_choices()[key]:
        cfg = load_config(None, {key: value})
        assert cfg[section][leaf] in (value, [value])


@pytest.mark.parametrize(
    "key, bad, hint",
    [
        ("model:encoding", "gird", "; did you mean grid?"),
        ("model:framework", "nerf", "; did you mean NeRF?"),  # case is no obstacle to the hint
        ("cameras:init", "noisy-gt", "; did you mean noisy_gt?"),
        ("tracks:ba_solver", "gauss", "."),
        ("training:autocast", "fp8", "."),
        ("tracks:late_kernel", "huber", "."),
        ("eval:alignment", "centre_only", "; did you mean centre-only?"),
        ("model:ray_space", None, "."),
    ],
)
def test_a_wrong_choice_names_key_value_and_the_allowed_values(key, bad, hint):
    with pytest.raises(ConfigError) as err:
        load_config(None, {key: bad})
    shown = "null" if bad is None else repr(bad)
    assert str(err.value) == (
        f"{key} must be one of {DECLARED_CHOICES[key]} but the command line gives {shown}{hint}"
    )


def test_choices_are_checked_per_element_in_scene_files_and_saved_configs(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(None, {"render:videos": ["rgb", "dpeth"]})
    assert str(err.value) == (
        "render:videos must be one of rgb | depth | rgb_depth (each element) but the command "
        "line gives ['rgb', 'dpeth']; did you mean depth?"
    )
    scene = tmp_path / "scene.yaml"
    scene.write_text("model:\n  encoding: grids\n")
    with pytest.raises(
        ConfigError, match=f"model:encoding must be one of frequency \\| grid but {scene}"
    ):
        load_config(scene)
    saved = tmp_path / "config.yaml"
    saved.write_text("eval:\n  tto_pixels: masked\n")
    with pytest.raises(ConfigError, match=f"but {saved} gives 'masked'; did you mean mask\\?"):
        load_saved_config(saved)
