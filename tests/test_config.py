"""Config layering and the errors a user meets when a config is wrong."""

import pytest

from utils.config import BASE_CONFIG, load_config, parse_overrides
from utils.errors import ConfigError


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
    typo = tmp_path / "typo.yaml"
    typo.write_text("model:\n  net_widht: 64\n")
    with pytest.raises(ConfigError, match="model:net_width"):
        load_config(typo)
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)


def test_every_base_key_has_a_comment():
    for line in BASE_CONFIG.read_text().splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and not stripped.endswith(":"):
            assert "#" in line, f"base.yaml key without a comment: {line!r}"


def test_every_shipped_config_loads():
    for path in sorted(BASE_CONFIG.parent.glob("*.yaml")):
        load_config(path)


def test_scientific_notation_is_a_number_for_untyped_keys_too():
    cfg = load_config(None, parse_overrides(["--cameras:lr_translation", "3e-4"]))
    assert cfg.cameras.lr_translation == pytest.approx(3e-4)
    with pytest.raises(ConfigError, match="expname must be a str"):
        load_config(None, parse_overrides(["--expname", "1e5"]))
