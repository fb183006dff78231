"""Tests for liandan.config: defaults, YAML in/out, overrides, did-you-mean errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from liandan.config import Config, DataConfig, apply_override, parse_duration
from liandan.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------ defaults
def test_defaults() -> None:
    cfg = Config()
    assert cfg.task is None
    assert cfg.data.root is None
    assert cfg.data.layout == "auto"
    assert cfg.data.val_fraction == 0.2
    assert cfg.data.normalize == "dataset"
    assert cfg.data.ignore_index is None  # none by default (VOC sets 255 itself)
    assert cfg.data.on_error == "fail"
    assert cfg.optim.name == "adamw"
    assert cfg.optim.lr == 1e-3
    assert cfg.schedule.name == "cosine"
    assert cfg.model.weights == "none"
    assert cfg.train.seed == 0
    assert cfg.augment.scale == (1.0, 1.0)
    assert Config.load(None) == cfg
    assert Config.load(None, []) == cfg


def test_resolved_monitor_follows_task() -> None:
    assert Config(task="segment").resolved_monitor() == "val/mean_iou"
    assert Config(task="classify").resolved_monitor() == "val/macro_f1"
    assert Config.load(None, ["train.monitor=val/loss"]).resolved_monitor() == "val/loss"


# ------------------------------------------------------------------ YAML round trip
def test_save_then_load_gives_equal_config(tmp_path: Path) -> None:
    cfg = Config.load(
        None,
        [
            "task=segment",
            "data.root=some/data",
            "data.bands=[4, 3, 2]",
            "data.percentiles=[1, 99]",
            "data.ignore_index=255",
            "augment.scale=[0.5, 1.0]",
            "loss.class_weights=[1.0, 2.5]",
            "optim.ema=0.999",
            "train.devices=2",
            "train.budget=10m",
        ],
    )
    path = tmp_path / "config.yaml"
    cfg.save(path)
    again = Config.load(path)
    assert again == cfg
    assert again.data.root == Path("some/data")
    assert again.augment.scale == (0.5, 1.0)
    # the file is plain YAML: no python tags, readable by any YAML parser
    text = path.read_text()
    assert "!!python" not in text
    assert yaml.safe_load(text)["data"]["bands"] == [4, 3, 2]


def test_default_config_round_trips(tmp_path: Path) -> None:
    Config().save(tmp_path / "c.yaml")
    assert Config.load(tmp_path / "c.yaml") == Config()


def test_empty_yaml_is_defaults(tmp_path: Path) -> None:
    assert Config.load(_write(tmp_path / "c.yaml", "")) == Config()


def test_yaml_file_values_are_read(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "c.yaml",
        "task: classify\ndata:\n  image_size: 64\n  normalize: imagenet\noptim: {lr: 3.0e-4}\n",
    )
    cfg = Config.load(path)
    assert cfg.task == "classify"
    assert cfg.data.image_size == 64
    assert cfg.data.normalize == "imagenet"
    assert cfg.optim.lr == 3e-4


# ------------------------------------------------------------------ overrides
def test_dotted_overrides_with_yaml_typed_values(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.yaml", "optim:\n  lr: 0.1\n")
    cfg = Config.load(
        path,
        [
            "optim.lr=3e-4",
            "model.arch=unet",
            "train.epochs=5",
            "optim.nesterov=true",
            "data.bands=[1, 2, 3]",
            "optim.ema=null",
            "data.ignore_index=255",
        ],
    )
    assert cfg.optim.lr == 3e-4  # the override wins over the file
    assert isinstance(cfg.train.epochs, int) and cfg.train.epochs == 5
    assert cfg.optim.nesterov is True
    assert cfg.data.bands == [1, 2, 3]
    assert cfg.optim.ema is None
    assert cfg.data.ignore_index == 255
    assert cfg.model.arch == "unet"


def test_later_override_wins() -> None:
    cfg = Config.load(None, ["train.epochs=3", "train.epochs=7"])
    assert cfg.train.epochs == 7


def test_override_without_equals_is_config_error() -> None:
    with pytest.raises(ConfigError, match="key=value"):
        Config.load(None, ["optim.lr"])


def test_override_into_a_value_is_config_error() -> None:
    with pytest.raises(ConfigError, match="not a section") as err:
        Config.load(None, ["optim.lr.x=1"])
    assert "optim.lr" in str(err.value)


# ------------------------------------------------------------------ unknown keys
@pytest.mark.parametrize(
    ("override", "right"),
    [
        ("optim.lrr=0.1", "optim.lr"),
        ("data.layuot=pairs", "data.layout"),
        ("modle.arch=unet", "model.arch"),
        ("train.epoch=3", "train.epochs"),
        ("epochs=3", "train.epochs"),  # a key's last part alone
        ("image_size=64", "data.image_size"),
        ("imgsz=64", "data.image_size"),  # Ultralytics' names
        ("batch=4", "train.batch_size"),
        ("lr0=0.01", "optim.lr"),
        ("model=unet", "model.arch"),  # a section's name for its main key
    ],
)
def test_unknown_override_key_has_did_you_mean(override: str, right: str) -> None:
    with pytest.raises(ConfigError) as err:
        Config.load(None, [override])
    assert err.value.where == override.partition("=")[0]
    assert "did you mean" in (err.value.hint or "")
    assert right in (err.value.hint or "")
    assert err.value.message in ("unknown config key", "model is a section, not a key")


def test_a_leaf_name_is_suggested_never_applied() -> None:
    with pytest.raises(ConfigError, match=r"did you mean train\.epochs"):
        Config.load(None, ["epochs=3"])


def test_an_ambiguous_leaf_name_suggests_every_key_it_ends() -> None:
    with pytest.raises(ConfigError) as err:
        Config.load(None, ["patience=3"])
    assert "train.patience" in (err.value.hint or "")
    assert "schedule.patience" in (err.value.hint or "")


def test_every_bad_key_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        Config.load(None, ["epochs=3", "optim.lr=0.1", "imgsz=64", "nonsense", "train=3"])
    items = "\n".join(err.value.items)
    assert len(err.value.items) == 4
    assert "epochs: unknown config key; did you mean train.epochs?" in items
    assert "imgsz: unknown config key; did you mean data.image_size?" in items
    assert "nonsense: not key=value" in items
    assert "train: train is a section, not a key" in items
    assert not any(item.startswith("optim.lr") for item in err.value.items)  # a good key


def test_check_overrides_refuses_keys_outside_the_command_sections() -> None:
    from liandan.config import check_overrides

    check_overrides(["predict.tile=256"], ["predict"])  # accepted
    with pytest.raises(ConfigError) as err:
        check_overrides(["train.epochs=3", "tile=256"], ["predict"], command="liandan predict")
    items = "\n".join(err.value.items)
    assert "train.epochs: not read by liandan predict; it reads predict.*" in items
    assert "tile: unknown config key; did you mean predict.tile?" in items
    with pytest.raises(ConfigError) as err:  # a leaf in two sections: the accepted one
        check_overrides(["batch_size=2"], ["predict"])
    assert err.value.hint == "did you mean predict.batch_size?"
    with pytest.raises(ConfigError, match="it reads no config key"):
        check_overrides(["predict.tile=256"], [], command="liandan export")


def test_override_values_are_typed_by_the_schema() -> None:
    from liandan.config import override_values

    values = override_values(["predict.tile=256", "predict.tta=true", "data.nodata=0"])
    assert values == {"predict.tile": 256, "predict.tta": True, "data.nodata": 0.0}
    with pytest.raises(ConfigError, match=r"predict\.tile"):
        override_values(["predict.tile=8"])  # below the schema's minimum


@pytest.mark.parametrize(
    ("text", "key", "right"),
    [
        ("data:\n  layuot: pairs\n", "data.layuot", "layout"),
        ("optim:\n  learning_rat: 0.1\n  lrr: 0.1\n", "optim.lrr", "lr"),
        ("augmnet:\n  hflip: 0.5\n", "augmnet", "augment"),
        ("tsk: segment\n", "tsk", "task"),
    ],
)
def test_unknown_file_key_has_did_you_mean(tmp_path: Path, text: str, key: str, right: str) -> None:
    path = _write(tmp_path / "c.yaml", text)
    with pytest.raises(ConfigError) as err:
        Config.load(path)
    message = str(err.value)
    assert key in message
    assert "unknown config key" in message
    assert str(path) in message
    assert f"{right!r}" in message  # the hint names the right key


def test_wrong_type_in_file_names_the_key(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.yaml", "train:\n  epochs: many\n")
    with pytest.raises(ConfigError) as err:
        Config.load(path)
    assert "train.epochs" in str(err.value)
    assert "'many'" in str(err.value)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("optim.lr=fast", "optim.lr"),
        ("optim.lr=-1", "optim.lr"),
        ("data.val_fraction=1.5", "data.val_fraction"),
        ("data.normalize=zscore", "data.normalize"),
        ("data.bands=red", "data.bands"),
        ("optim.name=adamx", "optim.name"),
        ("train.devices=lots", "train.devices"),
        ("task=detection-ish", "task"),
    ],
)
def test_wrong_type_override_names_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        Config.load(None, [override])
    assert key in str(err.value)


def test_all_problems_listed(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.yaml", "optim:\n  lr: x\ntrain:\n  epochs: y\n")
    with pytest.raises(ConfigError) as err:
        Config.load(path)
    assert any("optim.lr" in item for item in err.value.items)
    assert any("train.epochs" in item for item in err.value.items)


def test_assignment_is_validated() -> None:
    cfg = Config()
    with pytest.raises(ValueError):
        cfg.data.layout = "nonsense"  # type: ignore[assignment]


# ------------------------------------------------------------------ unsafe or bad files
def test_python_object_tag_is_rejected(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = f"!!python/object/apply:os.system ['touch {marker}']\n"
    path = _write(tmp_path / "evil.yaml", f"task: segment\ndata:\n  root: {payload}")
    with pytest.raises(ConfigError) as err:
        Config.load(path)
    assert str(path) in str(err.value)
    assert not marker.exists()
    path2 = _write(tmp_path / "evil2.yaml", f"!!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError):
        Config.load(path2)
    assert not marker.exists()


def test_python_tag_in_override_is_rejected(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with pytest.raises(ConfigError) as err:
        Config.load(None, [f"data.root=!!python/object/apply:os.system ['touch {marker}']"])
    assert "data.root" in str(err.value)
    assert not marker.exists()


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found") as err:
        Config.load(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(err.value)


def test_invalid_yaml_and_non_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="YAML"):
        Config.load(_write(tmp_path / "bad.yaml", "data: [unclosed\n"))
    with pytest.raises(ConfigError, match="mapping"):
        Config.load(_write(tmp_path / "list.yaml", "- a\n- b\n"))


# ------------------------------------------------------------------ aliases, helpers
@pytest.mark.parametrize(
    ("given", "task"),
    [
        ("classify", "classify"),
        ("classification", "classify"),
        ("segment", "segment"),
        ("segmentation", "segment"),
    ],
)
def test_task_aliases(tmp_path: Path, given: str, task: str) -> None:
    assert Config.load(None, [f"task={given}"]).task == task
    assert Config.load(_write(tmp_path / "c.yaml", f"task: {given}\n")).task == task


def test_apply_override_builds_nested_dict() -> None:
    data: dict = {}
    apply_override(data, "optim.lr=0.5")
    apply_override(data, "data.root=")
    assert data == {"optim": {"lr": 0.5}, "data": {"root": None}}


def test_section_models_forbid_extra() -> None:
    with pytest.raises(ValueError):
        DataConfig(nope=1)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90.0), ("10m", 600.0), ("1.5h", 5400.0), ("120", 120.0), (" 2M ", 120.0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "ten minutes", "5d", "m"])
def test_parse_duration_bad(text: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_duration(text)
    assert err.value.where == "train.budget"


# ------------------------------------------------------------------ generated reference
def test_config_reference_lists_every_key() -> None:
    from liandan.config_reference import render

    text = render()
    for name, field in Config.model_fields.items():
        assert f"`{name}`" in text
        section = field.annotation
        if isinstance(section, type) and hasattr(section, "model_fields"):
            for key in section.model_fields:
                assert f"`{name}.{key}`" in text, f"{name}.{key} missing"
    # defaults and source comments are carried over
    assert "dataset folder; the DATA argument fills it" in text
    assert "`0.2`" in text


def test_every_key_has_a_description() -> None:
    from liandan.config_reference import render

    empty = [
        line.split("|")[1].strip()
        for line in render().splitlines()
        if line.startswith("| `") and line.rstrip().endswith("|  |")
    ]
    assert not empty, f"add a trailing # comment in config.py for: {empty}"


def test_field_comments_read_from_source() -> None:
    from liandan.config import ScheduleConfig
    from liandan.config_reference import field_comments

    comments = field_comments(ScheduleConfig)
    assert comments["t0"] == "sgdr: epochs of the first cycle"
    assert comments["name"] == ""  # a multi-line Literal with no comment


def test_docs_config_md_is_up_to_date() -> None:
    docs = ROOT / "docs" / "config.md"
    out = subprocess.run(
        [sys.executable, "-m", "liandan.config_reference"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert docs.read_text(encoding="utf-8") == out, (
        "docs/config.md is stale: run `make docs` (python -m liandan.config_reference)"
    )


def test_a_number_is_read_as_text_where_the_key_takes_only_text() -> None:
    cfg = Config.load(None, ["predict.precision=32", "train.precision=32", "train.budget=600"])
    assert cfg.predict.precision == "32" and cfg.train.precision == "32"
    assert cfg.train.budget == "600"
    cfg = Config.load(None, ["optim.lr=1", "train.batch_size=4"])  # numbers stay numbers
    assert cfg.optim.lr == 1.0 and cfg.train.batch_size == 4
