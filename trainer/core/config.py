"""The training config: neural-net-rs's `config.json` format, plus our optional keys, validated."""

from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictInt,
    ValidationError,
    field_validator,
)

from trainer.core.activations import ACTIVATIONS, canonical
from trainer.errors import ConfigError
from trainer.fileio import read_json

DEFAULT_CONFIG = "default_config.json"


class Layer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    nodes: StrictInt = Field(gt=0)
    activation: str | None = None
    dropout: float = Field(default=0.0, ge=0, lt=1, allow_inf_nan=False)  # on this layer's nodes

    @field_validator("activation")
    @classmethod
    def _known_activation(cls, v: str | None) -> str | None:
        if v is None:
            return None
        name = canonical(v)
        if name is None:
            raise ValueError(f"must be one of {', '.join(ACTIVATIONS)} (any case)")
        return name


class Schedule(BaseModel):
    """How the learning rate changes with (fractional) epochs; see trainer/core/schedule.py."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    type: Literal["constant", "step", "exponential", "cosine"] = "constant"
    step_epochs: StrictInt = Field(default=10, gt=0)  # step: multiply by gamma every N epochs
    gamma: float = Field(default=0.1, gt=0, le=1, allow_inf_nan=False)  # step, exponential
    min_lr: float = Field(default=0.0, ge=0, allow_inf_nan=False)  # cosine: the final rate
    warmup_epochs: float = Field(default=0.0, ge=0, allow_inf_nan=False)  # linear from ~0


class Augment(BaseModel):
    """Random per-epoch changes of the training images, drawn from the seed (augment.py's
    shifts on the host, elastic.py's warps by a hash on the device)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    shift: StrictInt = Field(default=0, ge=0, le=4)  # up to this many pixels in x and in y
    # elastic distortions: a uniform [-1, 1) field per pixel, smoothed by a Gaussian of width
    # elastic_sigma pixels, times elastic_alpha (Simard et al. 2003: alpha 34, sigma 4)
    elastic_alpha: float = Field(default=0.0, ge=0, le=100, allow_inf_nan=False)
    elastic_sigma: float = Field(default=4.0, ge=1, le=10, allow_inf_nan=False)
    rotate: float = Field(default=0.0, ge=0, le=30, allow_inf_nan=False)  # up to +-this, degrees
    scale: float = Field(default=0.0, ge=0, le=0.3, allow_inf_nan=False)  # up to +-this share

    @property
    def warps(self) -> bool:
        """Whether the elastic warp (elastic.py) runs: a field, a rotation or a scaling."""
        return bool(self.elastic_alpha or self.rotate or self.scale)


class Config(BaseModel):
    """A validated config; defaults reproduce neural-net-rs (summed gradients, standardized x)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    layers: list[Layer] = Field(min_length=2)
    learning_rate: float = Field(gt=0, allow_inf_nan=False)
    epochs: StrictInt = Field(gt=0)
    momentum: float = Field(default=0.0, ge=0, lt=1, allow_inf_nan=False)
    batch_size: StrictInt = Field(gt=0)
    regularization_type: Literal["L1", "L2"] | None = None
    regularization_rate: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    seed: StrictInt = Field(default=0, ge=0)
    dtype: Literal["float32", "float64"] = "float32"
    loss: Literal["cross_entropy", "mse"] = "cross_entropy"
    loss_reduction: Literal["sum", "mean"] = "sum"
    init: Literal["auto", "xavier", "he", "uniform"] = "auto"
    input_scaling: Literal["standardize", "unit"] = "standardize"
    nesterov: bool = False
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    beta1: float = Field(default=0.9, ge=0, lt=1, allow_inf_nan=False)  # adam, adamw
    beta2: float = Field(default=0.999, ge=0, lt=1, allow_inf_nan=False)
    epsilon: float = Field(default=1e-8, gt=0, allow_inf_nan=False)
    weight_decay: float = Field(default=0.0, ge=0, allow_inf_nan=False)  # adamw, decoupled
    lr_schedule: Schedule = Schedule()
    validation_split: float = Field(default=0.0, ge=0, allow_inf_nan=False)  # share or count
    early_stopping_patience: StrictInt | None = Field(default=None, gt=0)
    restore_best_weights: bool = True  # with a validation split: end on the best epoch's
    augment: Augment = Augment()
    # what reading the file changed of its literal meaning (neural-net-rs's legacy format)
    _notes: tuple[str, ...] = PrivateAttr(default=())

    @field_validator("regularization_type", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v

    def model_post_init(self, _: Any) -> None:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers[:-1]):
            if layer.activation is None:
                raise ConfigError(f"layers[{i}].activation is missing: every layer but the last "
                                  f"needs one ({', '.join(ACTIVATIONS)})")
        if self.layers[-1].activation is not None:
            raise ConfigError(f"layers[{last}].activation must be absent: the last layer is the "
                              f"output and has no activation, got {self.layers[-1].activation!r}")
        if self.layers[-1].dropout:
            raise ConfigError(f"layers[{last}].dropout must be 0: the output layer cannot drop "
                              f"nodes, got {self.layers[-1].dropout}")
        if self.validation_split >= 1 and self.validation_split != int(self.validation_split):
            raise ConfigError(f"validation_split must be a share below 1 or a whole number of "
                              f"images, got {self.validation_split}")
        if self.early_stopping_patience and not self.validation_split:
            raise ConfigError("early_stopping_patience needs a validation_split to watch")
        out = self.layers[-2].activation
        if self.loss == "cross_entropy" and out != "softmax":
            raise ConfigError(f"loss cross_entropy needs a Softmax output (layers[{last - 1}]"
                              f".activation), got {out!r}; use \"loss\": \"mse\" for other outputs")

    @property
    def notes(self) -> tuple[str, ...]:
        """Lines to show the user about how the file was read (empty for most files)."""
        return self._notes

    @property
    def activations(self) -> list[str]:
        return [str(layer.activation) for layer in self.layers[:-1]]

    @property
    def sizes(self) -> list[int]:
        return [layer.nodes for layer in self.layers]

    def describe(self) -> str:
        """The network in one line: `784 -> 128 (sigmoid) -> 10 (softmax)`."""
        hidden = [f"{n} ({a})" for a, n in zip(self.activations, self.sizes[1:], strict=True)]
        return " -> ".join([str(self.sizes[0]), *hidden])

    @property
    def dropouts(self) -> list[float]:
        return [layer.dropout for layer in self.layers]

    def validation_size(self, n_train: int) -> int:
        """How many of `n_train` training images the validation split holds out."""
        v = self.validation_split
        return int(v) if v >= 1 else int(round(v * n_train))

    def to_dict(self) -> dict[str, Any]:
        """The resolved config: every key, loadable again with `Config.from_dict`."""
        d = self.model_dump()
        d["layers"] = [{k: v for k, v in layer.items() if v is not None and
                        not (k == "dropout" and v == 0.0)} for layer in d["layers"]]
        return d

    @classmethod
    def from_dict(cls, data: Any, source: str = "config") -> Config:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(data).__name__}")
        data, notes = _legacy(data, source)
        data, comment = _comment(data, source)
        notes = comment + notes
        try:
            config = cls.model_validate(data)
            config._notes = notes
            return config
        except ValidationError as e:
            raise ConfigError(f"{source}: {_describe(e)}") from None
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> Config:
        """A config file (`-`: standard input), checked like `from_dict`."""
        data = read_json(path, "config")
        return cls.from_dict(data, source="standard input" if str(path) == "-" else str(path))

    def replace(self, **changes: Any) -> Config:
        """A copy with `changes` applied (None values ignored), validated like a file."""
        data = self.to_dict() | {k: v for k, v in changes.items() if v is not None}
        return Config.from_dict(data, source="options")


def _legacy(data: dict[str, Any], source: str) -> tuple[dict[str, Any], tuple[str, ...]]:
    """neural-net-rs's second config format (its commit "Add momentum and regularisation to
    config.json") has `regularization_rate` without `regularization_type`: there that was L2,
    the only kind it had. Read it so, and say so."""
    if "regularization_rate" not in data or "regularization_type" in data:
        return data, ()
    rate = data["regularization_rate"]
    return data | {"regularization_type": "L2"}, (
        f"{source}: regularization_rate {rate} without regularization_type: L2, as "
        f"neural-net-rs meant it before it had regularization_type (see configs/README.md)",)


def _comment(data: dict[str, Any], source: str) -> tuple[dict[str, Any], tuple[str, ...]]:
    """A top-level "comment" is for the reader, not the network: shown when the file is read
    (a sweep's best.json says with it how it was trained), not kept in the config."""
    if "comment" not in data:
        return data, ()
    comment = data["comment"]
    if not isinstance(comment, str):
        raise ConfigError(f"{source}: comment must be text, got {type(comment).__name__}")
    return {k: v for k, v in data.items() if k != "comment"}, (f"{source}: {comment}",)


def default_config() -> Config:
    """neural-net-rs's default config, shipped inside the package."""
    text = resources.files("trainer").joinpath(DEFAULT_CONFIG).read_text(encoding="utf-8")
    return Config.from_dict(json.loads(text), source=DEFAULT_CONFIG)


def _loc(loc: tuple[Any, ...]) -> str:
    if not loc:
        return "config"
    return str(loc[0]) + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc[1:])


def _allowed_keys(loc: tuple[Any, ...]) -> str:
    """The keys allowed where an unknown one was found (loc: the path to the unknown key)."""
    nested = {"layers": Layer, "lr_schedule": Schedule, "augment": Augment}
    model = nested.get(loc[0], Config) if len(loc) > 1 else Config
    return ", ".join(model.model_fields)


def _describe(e: ValidationError) -> str:
    """Pydantic's first error as `layers[1].nodes must be greater than 0, got -3`."""
    err = e.errors(include_url=False)[0]
    msg = str(err["msg"])
    if err["type"] == "extra_forbidden":
        return f"unknown key {_loc(err['loc'])!r}; allowed keys: {_allowed_keys(err['loc'])}"
    if err["type"] == "missing":
        return f"{_loc(err['loc'])} is required"
    msg = msg.removeprefix("Value error, ").replace("Input should be", "must be")
    msg = msg.replace("Input should", "must")
    if err["type"] == "too_short":
        msg = f"must have at least {err['ctx']['min_length']} entries (input and output layers)"
    if isinstance(err.get("input"), float) and math.isnan(err["input"]):
        msg = "must be a finite number"
    return f"{_loc(err['loc'])} {msg}, got {json.dumps(err.get('input'), default=str)}"
