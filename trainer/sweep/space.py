"""A sweep's search space: a JSON file over config keys, validated, and moves around a point."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainer.core.config import Config
from trainer.errors import ConfigError
from trainer.fileio import read_json

KINDS = ("uniform", "log_uniform", "int", "choice")
_TOKEN = re.compile(r"\[(\d+)\]|\.?([A-Za-z_]\w*)")
PERTURB_SHARE = 0.1  # uniform and int: +-10% of the range
PERTURB_FACTOR = 1.3  # log_uniform (and log int): times or divided by up to this
PERTURB_KEEP = 0.7  # choice: keep the best's value with this probability


def parse_path(path: str) -> list[str | int]:
    """`layers[1].nodes` -> ["layers", 1, "nodes"]; raises ValueError if it is not a path."""
    parts: list[str | int] = []
    pos = 0
    while pos < len(path):
        m = _TOKEN.match(path, pos)
        if m is None or (pos == 0) != (m.group(0)[0] not in ".["):
            raise ValueError(path)
        parts.append(int(m.group(1)) if m.group(1) is not None else m.group(2))
        pos = m.end()
    if not parts:
        raise ValueError(path)
    return parts


@dataclass(frozen=True)
class Param:
    """One swept config key and how its values are drawn."""

    path: str
    kind: str  # one of KINDS
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: int = 1
    choices: tuple[Any, ...] = ()

    def distribution(self) -> Any:
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.kind == "choice":
            return CategoricalDistribution(self.choices)
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=self.step)
        return FloatDistribution(self.low, self.high, log=self.kind == "log_uniform")

    def suggest(self, trial: Any) -> Any:
        if self.kind == "choice":
            return trial.suggest_categorical(self.path, self.choices)
        if self.kind == "int":
            return trial.suggest_int(self.path, int(self.low), int(self.high), step=self.step,
                                     log=self.log)
        return trial.suggest_float(self.path, self.low, self.high, log=self.kind == "log_uniform")

    def probes(self) -> list[tuple[str, Any]]:
        """The values checked before a sweep starts: the bounds and the middle, or each choice."""
        if self.kind == "choice":
            return [(f"choice {i}", c) for i, c in enumerate(self.choices)]
        return [("lower bound", self.to_value(self.low)), ("middle", self.middle()),
                ("upper bound", self.to_value(self.high))]

    def middle(self) -> Any:
        if self.kind == "choice":
            return self.choices[0]
        logs = self.kind == "log_uniform" or self.log
        mid = math.sqrt(self.low * self.high) if logs else (self.low + self.high) / 2
        return self.to_value(mid)

    def to_value(self, x: float) -> Any:
        """`x` as this parameter's type: on the int grid (low + k * step), clipped, or a float."""
        if self.kind != "int":
            return float(x)
        k = round((x - self.low) / self.step)
        return int(min(max(self.low + k * self.step, self.low), self.high))

    def contains(self, value: Any) -> bool:
        if self.kind == "choice":
            return any(value == c and type(value) is type(c) for c in self.choices)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.kind == "int":
            return (isinstance(value, int) and self.low <= value <= self.high
                    and (value - self.low) % self.step == 0)
        return self.low <= value <= self.high

    def grid_values(self) -> list[Any] | None:
        if self.kind == "choice":
            return list(self.choices)
        if self.kind == "int":
            return list(range(int(self.low), int(self.high) + 1, self.step))
        return None

    def perturb(self, value: Any, rng: np.random.Generator) -> Any:
        """neural-net-rs's "plus or minus a small random amount", clipped to the bounds."""
        if self.kind == "choice":
            if rng.random() < PERTURB_KEEP:
                return value
            return self.choices[int(rng.integers(len(self.choices)))]
        if self.kind == "log_uniform" or (self.kind == "int" and self.log):
            x = value * PERTURB_FACTOR ** rng.uniform(-1.0, 1.0)
        elif self.kind == "int":
            most = max(1, round(PERTURB_SHARE * (self.high - self.low) / self.step))
            x = value + int(rng.integers(-most, most + 1)) * self.step
        else:
            x = value + rng.uniform(-PERTURB_SHARE, PERTURB_SHARE) * (self.high - self.low)
        return self.to_value(min(max(x, self.low), self.high))


@dataclass(frozen=True)
class Space:
    source: str  # the file it came from, for messages
    params: tuple[Param, ...]

    def distributions(self) -> dict[str, Any]:
        return {p.path: p.distribution() for p in self.params}

    def suggest(self, trial: Any) -> dict[str, Any]:
        return {p.path: p.suggest(trial) for p in self.params}

    def apply(self, config: Config, values: dict[str, Any], source: str = "") -> Config:
        """`config` with each swept key set to its value, validated like a config file."""
        data = config.model_dump()
        for path, value in values.items():
            *parents, leaf = parse_path(path)
            node: Any = data
            for part in parents:
                node = node[part]
            node[leaf] = value
        return Config.from_dict(data, source=source or f"{self.source} sample")

    def grid(self) -> dict[str, list[Any]]:
        """The grid sampler's search space: choices, and ints expanded by their step."""
        grid = {}
        for p in self.params:
            values = p.grid_values()
            if values is None:
                raise ConfigError(f"{self.source}: {p.path}: the grid sampler needs choice or int "
                                  f"parameters, this one is {p.kind}; list the values to try "
                                  f"as {{\"choice\": [...]}} or use another --sampler")
            grid[p.path] = values
        return grid

    def baseline(self, config: Config) -> dict[str, Any] | None:
        """The config's own values of the swept keys, if every one lies in the space."""
        dumped, values = config.model_dump(), {}
        for p in self.params:
            node: Any = dumped
            for part in parse_path(p.path):
                node = node[part]
            if not p.contains(node):
                return None
            values[p.path] = node
        return values

    def check(self, config: Config, check_data: Callable[[Config], None] | None = None) -> None:
        """Every bound, middle and choice, one key at a time, must give a valid config."""
        middles = {p.path: p.middle() for p in self.params}
        for p in self.params:
            for which, value in p.probes():
                where = f"{self.source}: {p.path} = {value!r} ({which})"
                cfg = self.apply(config, middles | {p.path: value}, source=where)
                if check_data is not None:
                    try:
                        check_data(cfg)
                    except ConfigError as e:
                        raise ConfigError(f"{where}: {e}") from None

    def to_json(self) -> dict[str, Any]:
        out = {}
        for p in self.params:
            if p.kind == "choice":
                out[p.path] = {"choice": list(p.choices)}
            elif p.kind == "int":
                out[p.path] = {"int": [int(p.low), int(p.high)], "log": p.log, "step": p.step}
            else:
                out[p.path] = {p.kind: [p.low, p.high]}
        return out


def load_space(path: str | Path, config: Config) -> Space:
    """Read and validate a space file against `config`'s keys; errors name the file and key."""
    return parse_space(read_json(path, "space file"), config, str(path))


def parse_space(data: Any, config: Config, source: str = "space") -> Space:
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{source}: expected a JSON object of config keys to sweep, e.g. "
                          f'{{"learning_rate": {{"log_uniform": [0.001, 0.1]}}}}')
    dumped = config.model_dump()
    params = []
    for key, spec in data.items():
        canonical = _check_path(key, dumped, source)
        params.append(_parse_param(canonical, spec, f"{source}: {key}"))
    if len({p.path for p in params}) < len(params):
        raise ConfigError(f"{source}: a config key appears twice (under two spellings)")
    return Space(source, tuple(params))


def _check_path(key: str, dumped: dict[str, Any], source: str) -> str:
    try:
        parts = parse_path(key)
    except ValueError:
        raise ConfigError(f"{source}: {key!r} is not a config key path (e.g. learning_rate, "
                          f"layers[1].nodes, lr_schedule.gamma)") from None
    node: Any = dumped
    done = ""
    for part in parts:
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                have = f"{done}[0] to {done}[{len(node) - 1}]" if isinstance(node, list) else \
                    f"no list at {done}"
                raise ConfigError(f"{source}: unknown config key {key!r}: the config has {have}")
            done += f"[{part}]"
        else:
            if not isinstance(node, dict) or part not in node:
                keys = ", ".join(node) if isinstance(node, dict) else "none"
                raise ConfigError(f"{source}: unknown config key {key!r}; the keys "
                                  f"{'of ' + done if done else 'there'} are: {keys}")
            done += f".{part}" if done else part
        node = node[part]
    if isinstance(node, dict | list):
        raise ConfigError(f"{source}: {key} is a group of keys, not one value; sweep its "
                          f"members (e.g. {key}{'[0]' if isinstance(node, list) else '.'}...)")
    return done


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _parse_param(path: str, spec: Any, where: str) -> Param:
    kinds = [k for k in KINDS if isinstance(spec, dict) and k in spec]
    if len(kinds) != 1:
        raise ConfigError(f"{where}: expected one of {', '.join(KINDS)}, e.g. "
                          f'{{"uniform": [0.1, 0.9]}}, got {json.dumps(spec)}')
    kind = kinds[0]
    extra = set(spec) - {kind} - ({"log", "step"} if kind == "int" else set())
    if extra:
        raise ConfigError(f"{where}: unknown option {sorted(extra)[0]!r} for {kind}"
                          + ("; int takes log and step" if kind == "int" else ""))
    value = spec[kind]
    if kind == "choice":
        if not isinstance(value, list) or not value:
            raise ConfigError(f"{where}: choice needs a non-empty list of values, got "
                              f"{json.dumps(value)}")
        if not all(v is None or isinstance(v, str | bool | int | float) for v in value):
            raise ConfigError(f"{where}: choice values must be numbers, strings, booleans or "
                              f"null, got {json.dumps(value)}")
        if len({json.dumps(v) for v in value}) < len(value):
            raise ConfigError(f"{where}: choice lists a value twice: {json.dumps(value)}")
        return Param(path, kind, choices=tuple(value))
    if not (isinstance(value, list) and len(value) == 2 and all(map(_number, value))):
        raise ConfigError(f"{where}: {kind} needs [low, high] (two finite numbers), got "
                          f"{json.dumps(value)}")
    low, high = value
    if low >= high:
        raise ConfigError(f"{where}: {kind} needs low < high, got [{low}, {high}]")
    log = spec.get("log", False)
    if kind == "log_uniform" and low <= 0:
        raise ConfigError(f"{where}: log_uniform needs low > 0, got [{low}, {high}]")
    if kind != "int":
        return Param(path, kind, float(low), float(high))
    step = spec.get("step", 1)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high)):
        raise ConfigError(f"{where}: int needs whole-number bounds, got [{low}, {high}]")
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log must be true or false, got {json.dumps(log)}")
    if not isinstance(step, int) or isinstance(step, bool) or step < 1:
        raise ConfigError(f"{where}: step must be a whole number >= 1, got {json.dumps(step)}")
    if log and low <= 0:
        raise ConfigError(f"{where}: int with log needs low > 0, got [{low}, {high}]")
    if log and step != 1:
        raise ConfigError(f"{where}: int with log takes no step (got step {step})")
    if (high - low) % step:
        raise ConfigError(f"{where}: high - low must be a multiple of step {step}, got "
                          f"[{low}, {high}]")
    return Param(path, kind, low, high, log=log, step=step)

