"""Configs: neural-net-rs's format loads; each mistake gets its own message naming the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.core.config import Config, default_config
from trainer.errors import ConfigError

# sweep-*.json are search spaces for `trainer sweep`, not configs
CONFIGS = sorted(p for p in Path(__file__).parent.parent.joinpath("configs").glob("*.json")
                 if not p.name.startswith("sweep-"))
BASE = default_config().to_dict()


def test_there_are_configs() -> None:
    assert {p.stem for p in CONFIGS} >= {"default", "lr-0.001", "lr-0.1", "hidden-256",
                                         "hidden-64", "deep-256-128"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_config_loads(path: Path) -> None:
    cfg = Config.from_file(path)
    classes = {"emnist-letters": 26}.get(path.stem, 10)  # the dataset the config is for
    assert cfg.sizes[0] == 784 and cfg.sizes[-1] == classes


def test_default_is_neural_net_rs_default() -> None:
    cfg = default_config()
    assert cfg.sizes == [784, 128, 10]
    assert cfg.activations == ["sigmoid", "softmax"]
    assert (cfg.learning_rate, cfg.momentum, cfg.batch_size, cfg.epochs) == (0.01, 0.5, 32, 30)
    assert cfg.loss_reduction == "sum" and cfg.input_scaling == "standardize"
    assert cfg == Config.from_file(Path(__file__).parent.parent / "configs" / "default.json")


def test_resolved_config_round_trips() -> None:
    cfg = Config.from_dict(BASE | {"regularization_type": "l2", "regularization_rate": 1e-4})
    assert cfg.regularization_type == "L2"
    assert Config.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def layers(*specs: tuple[int, str | None]) -> list[dict]:
    return [{"nodes": n} | ({"activation": a} if a else {}) for n, a in specs]


BAD = {
    "unknown key": ({"colour": "red"}, "unknown key 'colour'"),
    "unknown layer key": ({"layers": [{"nodes": 784, "activation": "Softmax", "size": 3},
                                      {"nodes": 10}]},
                          "unknown key 'layers[0].size'; allowed keys: nodes, activation, dropout"),
    "unknown augment key": ({"augment": {"elastic": 34}},
                            "unknown key 'augment.elastic'; allowed keys: shift, elastic_alpha, "
                            "elastic_sigma, rotate, scale$"),
    "empty key": ({"": 1}, "unknown key ''; allowed keys: layers, "),
    "lr zero": ({"learning_rate": 0}, "learning_rate must be greater than 0, got 0"),
    "lr negative": ({"learning_rate": -0.1}, "learning_rate must be greater than 0"),
    "lr nan": ({"learning_rate": float("nan")}, "learning_rate must be a finite number"),
    "lr string": ({"learning_rate": "0.1"}, "learning_rate must be a valid number"),
    "zero nodes": ({"layers": layers((784, "Sigmoid"), (0, "Softmax"), (10, None))},
                   "layers[1].nodes must be greater than 0, got 0"),
    "negative nodes": ({"layers": layers((784, "Sigmoid"), (-3, "Softmax"), (10, None))},
                       "layers[1].nodes must be greater than 0, got -3"),
    "unknown activation": ({"layers": layers((784, "Swish"), (10, None))},
                           "layers[0].activation must be one of sigmoid"),
    "activation on last": ({"layers": layers((784, "Softmax"), (10, "ReLU"))},
                           "layers[1].activation must be absent"),
    "missing activation": ({"layers": layers((784, None), (128, "Softmax"), (10, None))},
                           "layers[0].activation is missing"),
    "batch size zero": ({"batch_size": 0}, "batch_size must be greater than 0, got 0"),
    "epochs float": ({"epochs": 2.5}, "epochs must be a valid integer, got 2.5"),
    "momentum one": ({"momentum": 1.0}, "momentum must be less than 1"),
    "one layer": ({"layers": layers((784, None))}, "layers must have at least 2 entries"),
    "bad regularization": ({"regularization_type": "L3"}, "regularization_type must be"),
    "ce without softmax": ({"layers": layers((784, "Sigmoid"), (10, None))},
                           "loss cross_entropy needs a Softmax output"),
    "bad dtype": ({"dtype": "float16"}, "dtype must be 'float32' or 'float64'"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_config_names_key_and_value(case: str) -> None:
    change, message = BAD[case]
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Config.from_dict(BASE | change, source="cfg.json")


def test_missing_key_and_not_an_object() -> None:
    with pytest.raises(ConfigError, match="learning_rate is required"):
        Config.from_dict({k: v for k, v in BASE.items() if k != "learning_rate"})
    with pytest.raises(ConfigError, match="expected a JSON object, got list"):
        Config.from_dict([1, 2])


def test_unreadable_and_invalid_json_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        Config.from_file(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    with pytest.raises(ConfigError, match=r"bad.json: not valid JSON"):
        Config.from_file(bad)


# --- any JSON at all: only ConfigError, and from the CLI exit 2 without a traceback ------------

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=3),
    max_leaves=12)
KEYS = st.sampled_from(["layers", "learning_rate", "epochs", "momentum", "batch_size",
                        "regularization_type", "dtype", "loss", "optimizer", "lr_schedule",
                        "augment", "validation_split", "early_stopping_patience", "seed"])


@given(st.dictionaries(KEYS, JSON, max_size=4) | JSON)
def test_random_configs_raise_only_config_errors(data) -> None:
    candidate = BASE | data if isinstance(data, dict) else data
    try:
        Config.from_dict(candidate)
    except ConfigError as e:  # one line that names what is wrong
        message = str(e)
        assert message.startswith("config: ") and "\n" not in message, message
        if isinstance(data, dict):
            # the key as it is, or escaped (control characters)
            assert any(repr(key) in message or (key and key in message) for key in data), message
        else:
            assert message.startswith("config: expected a JSON object, got "), message


@given(st.dictionaries(KEYS, JSON, min_size=1, max_size=3))
def test_random_configs_through_the_cli_exit_2(tmp_path_factory, data) -> None:
    from typer.testing import CliRunner

    from trainer.cli.app import app

    candidate = BASE | data
    try:
        Config.from_dict(candidate)
        return  # valid by chance: nothing to check here
    except ConfigError:
        pass
    path = tmp_path_factory.mktemp("cfg") / "random.json"
    path.write_text(json.dumps(candidate))
    result = CliRunner().invoke(app, ["train", str(path), "--run-dir",
                                      str(path.parent / "run")])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "random.json" in result.output
    assert not (path.parent / "run").exists()


def test_a_comment_is_shown_not_kept_and_must_be_text() -> None:
    from trainer.core.config import Config, default_config
    from trainer.errors import ConfigError

    data = default_config().to_dict()
    read = Config.from_dict({"comment": "2 epochs, as the sweep ran it"} | data, source="b.json")
    assert read.notes == ("b.json: 2 epochs, as the sweep ran it",)
    assert read.to_dict() == data  # not a key of the config
    with pytest.raises(ConfigError, match="b.json: comment must be text, got int"):
        Config.from_dict(data | {"comment": 3}, source="b.json")
