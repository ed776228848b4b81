from pathlib import Path

import pytest

from tunesmith.config import ConfigError, RunConfig, load_config


def test_defaults_make_a_complete_config() -> None:
    config = load_config(None, ["data.train=[a.jsonl]"])
    assert config.model.name == "smollm2-135m-instruct"
    assert config.method.name == "lora"
    assert config.data.train == [Path("a.jsonl")]


def test_yaml_then_overrides_in_that_order(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  epochs: 5\n  batch_size: 4\ndata:\n  train: d.jsonl\n")
    config = load_config(path, ["train.epochs=2"])
    assert config.train.epochs == 2
    assert config.train.batch_size == 4
    assert config.data.train == [tmp_path / "d.jsonl"]  # relative to the YAML file
    assert config.output.name == "run"


def test_unknown_key_names_the_key_and_suggests(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  epoch: 2\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert "train.epoch: unknown key" in message
    assert "Did you mean 'train.epochs'?" in message


def test_bad_choice_lists_allowed_values_and_suggests() -> None:
    with pytest.raises(ConfigError) as error:
        load_config(None, ["method.name=lorra"])
    message = str(error.value)
    assert "method.name" in message and "qlora" in message
    assert "Did you mean 'lora'?" in message


def test_a_setting_the_chosen_method_lacks_is_an_error_naming_it() -> None:
    with pytest.raises(ConfigError) as error:
        load_config(None, ["method.name=ia3", "method.r=64"])
    assert "method.r: unknown key. method ia3 has no such setting" in str(error.value)
    with pytest.raises(ConfigError, match="objective sft has no such setting"):
        load_config(None, ["objective.beta=0.3"])
    assert load_config(None, ["method.r=8"]).method.r == 8  # the default method's knob


def test_enum_like_settings_are_checked_when_the_config_loads() -> None:
    with pytest.raises(ConfigError, match="did you mean 'accuracy'"):
        load_config(None, ["eval.metrics=[acuracy]"])
    with pytest.raises(ConfigError, match="Did you mean 'chat'"):
        load_config(None, ["data.format=chatt"])


def test_a_single_path_means_a_list_of_one() -> None:
    config = load_config(None, ["data.test=held.jsonl", "data.train=train.jsonl"])
    assert config.data.test == [Path("held.jsonl")] and config.data.train == [Path("train.jsonl")]
    assert config.run_dir == Path("runs/train").resolve()


def test_bad_type_and_bad_override_syntax() -> None:
    with pytest.raises(ConfigError, match=r"train\.batch_size"):
        load_config(None, ["train.batch_size=many"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(None, ["train.epochs"])


def test_resolved_config_round_trips() -> None:
    config = load_config(None, ["train.epochs=2", "method.r=8"])
    import yaml

    again = RunConfig.model_validate(yaml.safe_load(config.to_yaml()))
    assert again == config


@pytest.mark.parametrize("name", ["../../elsewhere", "/tmp/x", "a/b", "a\\b", "..", "x..y", ""])
def test_an_output_name_that_leaves_output_dir_is_an_error_naming_the_key(name: str) -> None:
    with pytest.raises(ConfigError, match=r"output\.name: .*one folder name inside output\.dir"):
        load_config(overrides=[f"output.name='{name}'"])


def test_the_run_dir_is_resolved_and_must_stay_inside_output_dir(tmp_path: Path) -> None:
    config = load_config(overrides=[f"output.dir={tmp_path / 'runs'}", "output.name=mine"])
    assert config.run_dir == (tmp_path / "runs" / "mine").resolve()
    (tmp_path / "runs").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "runs" / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    config.output.name = "link"
    with pytest.raises(ConfigError, match=r"output\.name: the run directory .* is not inside"):
        _ = config.run_dir


def test_a_cli_output_name_with_dot_dot_stops_before_anything_is_written(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tunesmith.cli import app

    data = tmp_path / "d.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "a"}]}\n')
    result = CliRunner().invoke(
        app,
        ["train", "--data", str(data), "--set", f"output.dir={tmp_path / 'runs'}",
         "--set", "output.name=../../x"],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "output.name" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists() and not (tmp_path.parent / "x").exists()
