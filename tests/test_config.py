"""Config loading, overrides and the errors a user sees."""

from __future__ import annotations

from pathlib import Path

import pytest

from foundation.errors import ConfigError
from pipeline.config import Config, load_config, save_config

ROOT = Path(__file__).resolve().parent.parent


def test_demo_config_loads_and_overrides_apply():
    cfg = load_config(ROOT / "configs/demo.yaml", ["data.seed=7", "train.lr=1e-4", "data.eval_splits=[val]"])
    assert cfg.data.seed == 7
    assert cfg.train.lr == pytest.approx(1e-4)
    assert cfg.data.eval_splits == ["val"]
    assert cfg.model.variant == "demo"


def test_unknown_key_suggests_closest():
    with pytest.raises(ConfigError, match=r"unknown config key 'data.sede'.*did you mean 'seed'"):
        load_config(None, ["data.sede=3"])


def test_unknown_key_in_yaml_suggests_closest(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("trian:\n  steps: 3\n")
    with pytest.raises(ConfigError, match=r"'trian'.*did you mean 'train'"):
        load_config(path)


def test_wrong_type_names_key_and_value():
    with pytest.raises(ConfigError, match=r"train.steps.*'many'"):
        load_config(None, ["train.steps=many"])


def test_out_of_range_names_key_value_and_bound():
    with pytest.raises(ConfigError, match=r"train.batch_size.*0.*greater than or equal to 1"):
        load_config(None, ["train.batch_size=0"])


def test_bad_choice_lists_valid_set_and_suggests():
    with pytest.raises(ConfigError, match=r"data.dataset.*'refcoc'.*refcoco.*did you mean"):
        load_config(None, ["data.dataset=refcoc"])


def test_override_syntax_error():
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config(None, ["data.seed"])


def test_extends_merges_and_detects_cycles(tmp_path):
    (tmp_path / "base.yaml").write_text("train:\n  steps: 10\n  lr: 0.001\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\ntrain:\n  steps: 20\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert (cfg.train.steps, cfg.train.lr) == (20, 0.001)
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="extends itself"):
        load_config(tmp_path / "a.yaml")


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n- at the top\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(ROOT / "configs/demo.yaml", ["data.seed=3"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg
    assert again.digest(["data"]) == cfg.digest(["data"])
    assert Config().digest(["data"]) != cfg.digest(["data"])


def test_openvino_artifacts_default_off_for_tensorrt_devices_only():
    jetson = load_config(None, device="jetson-orin-nano")
    assert not jetson.openvino_artifacts(jetson.export.openvino)
    assert not jetson.openvino_artifacts(jetson.quant.openvino)
    x86 = load_config(None, device="x86-cpu")
    assert x86.openvino_artifacts(x86.export.openvino) and x86.openvino_artifacts(x86.quant.openvino)
    forced = load_config(None, ["export.openvino=true", "quant.openvino=false"], device="jetson-orin-nano")
    assert forced.openvino_artifacts(forced.export.openvino) and not forced.openvino_artifacts(forced.quant.openvino)


def test_device_profiles_load_and_unknown_device_lists_valid():
    from pipeline.config import device_names

    names = device_names()
    assert {"x86-cpu", "jetson-orin-nano", "jetson-orin-nx", "jetson-agx-orin", "jetson-xavier-nx-jp5"} <= set(names)
    for name in names:
        cfg = load_config(ROOT / "configs/demo.yaml", device=name)
        assert cfg.device.name == name
    jp5 = load_config(None, device="jetson-xavier-nx-jp5")
    assert (jp5.device.trt_version, jp5.device.opset) == ("8.5", 17)
    assert load_config(None, device="jetson-agx-orin").device.dla_core == 0
    from quantize.trt_compat import load_op_list

    for name in names:  # a TensorRT profile exports at an opset whose ops its parser is known to take
        dev = load_config(None, device=name).device
        if dev.backend == "tensorrt":
            ops = load_op_list(dev.trt_version)
            assert dev.opset is not None and ops["opset_min"] <= dev.opset <= ops["opset_max"], name
            assert dev.opset < 20 or "Gelu" in ops["supported"], f"{name}: opset 20 emits Gelu, not in its TRT op list"
    with pytest.raises(ConfigError, match=r"unknown device 'jetson-nano'.*did you mean 'jetson-orin-nano'.*x86-cpu"):
        load_config(None, device="jetson-nano")
