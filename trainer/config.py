"""The training config: neural-net-rs's `config.json` format, plus our optional keys, validated."""

from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator

from trainer.activations import ACTIVATIONS, canonical
from trainer.errors import ConfigError

DEFAULT_CONFIG = "default_config.json"


class Layer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    nodes: StrictInt = Field(gt=0)
    activation: str | None = None

    @field_validator("activation")
    @classmethod
    def _known_activation(cls, v: str | None) -> str | None:
        if v is None:
            return None
        name = canonical(v)
        if name is None:
            raise ValueError(f"must be one of {', '.join(ACTIVATIONS)} (any case)")
        return name


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
        out = self.layers[-2].activation
        if self.loss == "cross_entropy" and out != "softmax":
            raise ConfigError(f"loss cross_entropy needs a Softmax output (layers[{last - 1}]"
                              f".activation), got {out!r}; use \"loss\": \"mse\" for other outputs")

    @property
    def activations(self) -> list[str]:
        return [str(layer.activation) for layer in self.layers[:-1]]

    @property
    def sizes(self) -> list[int]:
        return [layer.nodes for layer in self.layers]

    def to_dict(self) -> dict[str, Any]:
        """The resolved config: every key, loadable again with `Config.from_dict`."""
        d = self.model_dump()
        d["layers"] = [{k: v for k, v in layer.items() if v is not None} for layer in d["layers"]]
        return d

    @classmethod
    def from_dict(cls, data: Any, source: str = "config") -> Config:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise ConfigError(f"{source}: {_describe(e)}") from None
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> Config:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read config {path}: {e}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON: {e}") from None
        return cls.from_dict(data, source=str(path))

    def replace(self, **changes: Any) -> Config:
        """A copy with `changes` applied (None values ignored), validated like a file."""
        data = self.to_dict() | {k: v for k, v in changes.items() if v is not None}
        return Config.from_dict(data, source="options")


def default_config() -> Config:
    """neural-net-rs's default config, shipped inside the package."""
    text = resources.files("trainer").joinpath(DEFAULT_CONFIG).read_text(encoding="utf-8")
    return Config.from_dict(json.loads(text), source=DEFAULT_CONFIG)


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "config"


def _describe(e: ValidationError) -> str:
    """Pydantic's first error as `layers[1].nodes must be greater than 0, got -3`."""
    err = e.errors(include_url=False)[0]
    msg = str(err["msg"])
    if err["type"] == "extra_forbidden":
        allowed = ", ".join(Config.model_fields) if len(err["loc"]) == 1 else "nodes, activation"
        return f"unknown key {_loc(err['loc'])!r}; allowed keys: {allowed}"
    if err["type"] == "missing":
        return f"{_loc(err['loc'])} is required"
    msg = msg.removeprefix("Value error, ").replace("Input should be", "must be")
    msg = msg.replace("Input should", "must")
    if err["type"] == "too_short":
        msg = f"must have at least {err['ctx']['min_length']} entries (input and output layers)"
    if isinstance(err.get("input"), float) and math.isnan(err["input"]):
        msg = "must be a finite number"
    return f"{_loc(err['loc'])} {msg}, got {json.dumps(err.get('input'), default=str)}"
