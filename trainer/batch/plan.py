"""A batch: every config with every seed, each an ordinary run directory in one group directory,
which the same command finds again (and resumes) by its manifest, group.json."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.core.config import Config, default_config
from trainer.errors import TrainerError, UsageError
from trainer.fileio import atomic_write_json, read_json
from trainer.run.rundir import check_run_name, claim_run_dir

GROUP_FILE = "group.json"
FORMAT = "trainer-group/1"
MAX_SEEDS = 1000
# what makes two batches the same batch: the same command again resumes the group it made
SAME_BATCH = ("name", "configs", "seeds", "limit_train", "limit_test", "backend", "data")


def parse_seeds(text: str) -> list[int]:
    """`--seeds N`: seeds 0 to N-1; `--seeds 3,5,8` (or `7,`): those seeds."""
    parts = [p.strip() for p in text.split(",")]
    if "," in text:
        parts = [p for p in parts if p] if text.rstrip().endswith(",") else parts
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise UsageError(f"--seeds {text!r}: give a count (--seeds 5: seeds 0 to 4) or a list "
                         f"of seeds (--seeds 0,1,2; one seed: --seeds 7,)") from None
    if "," not in text:
        if not 1 <= values[0] <= MAX_SEEDS:
            raise UsageError(f"--seeds {text}: a count of seeds is from 1 to {MAX_SEEDS}")
        return list(range(values[0]))
    if not values or any(v < 0 for v in values) or len(values) > MAX_SEEDS:
        raise UsageError(f"--seeds {text!r}: seeds are integers >= 0, at most {MAX_SEEDS}")
    if len(set(values)) != len(values):
        raise UsageError(f"--seeds {text!r}: a seed is given twice")
    return values


@dataclass(frozen=True)
class Member:
    """One run of a batch: a config (its name, resolved) with one seed."""

    config_name: str
    config: Config

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def dirname(self) -> str:
        return f"{self.config_name}-seed{self.seed}"


@dataclass(frozen=True)
class Batch:
    """What a batch trains: configs by name (overrides applied), the seeds (None: each
    config's own), the image limits and the backend."""

    configs: dict[str, Config]
    seeds: list[int] | None = None
    limit_train: int | None = None
    limit_test: int | None = None
    backend: str = "numpy"
    name: str = "batch"

    def members(self) -> list[Member]:
        """Config by config, seed by seed: the order they train in (one worker)."""
        return [Member(name, cfg if seed is None else cfg.replace(seed=seed))
                for name, cfg in self.configs.items() for seed in (self.seeds or [None])]

    def manifest(self, fingerprint: str) -> dict[str, Any]:
        return {"format": FORMAT, "name": self.name, "created": time.time(),
                "configs": {name: cfg.to_dict() for name, cfg in self.configs.items()},
                "seeds": self.seeds, "limit_train": self.limit_train,
                "limit_test": self.limit_test, "backend": self.backend, "data": fingerprint}


def load_configs(paths: list[Path], overrides: dict[str, Any]) -> dict[str, Config]:
    """Each config file, with the overrides, by its file name (which names its runs); no
    paths: the built-in config, named `default`."""
    if not paths:
        return {"default": default_config().replace(**overrides)}
    configs: dict[str, Config] = {}
    seen: dict[str, Path] = {}
    for path in paths:
        if str(path) == "-":
            raise UsageError("a batch reads its configs from files, not from standard input")
        name = check_run_name(path.stem, what="config name",
                              hint=f" (a batch names its runs after the file {str(path)!r}: "
                                   f"rename or copy it)")
        if name in seen:
            same = seen[name].resolve() == path.resolve()
            raise UsageError(f"{seen[name]} is given twice" if same else
                             f"{seen[name]} and {path} are both named {name!r}: a batch names "
                             f"its runs after the config files; copy one under another name")
        seen[name] = path
        configs[name] = Config.from_file(path).replace(**overrides)
    return configs


def default_name(config_names: list[str]) -> str:
    """The config names joined by '+', or the first and a count when that is too long."""
    joined = "+".join(config_names)
    if len(joined) <= 60:
        return joined
    return f"{config_names[0][:40]}+{len(config_names) - 1}-more"


def open_group(batch: Batch, fingerprint: str, run_dir: Path | None,
               root: Path = Path("runs")) -> tuple[Path, bool]:
    """The group directory: `run_dir` if given (new, empty, or holding this very batch), else
    the newest group under `root` that holds this batch, else a new `root/<time>-<name>`.
    Returns it and whether it was there before (a resumed batch)."""
    manifest = batch.manifest(fingerprint)
    if run_dir is not None:
        if (run_dir / GROUP_FILE).is_file():
            _check_same(run_dir, read_manifest(run_dir), manifest)
            return run_dir, True
        path = claim_run_dir(run_dir, batch.name)  # new or empty, else a clear refusal
    else:
        found = [p for p in _groups(root) if _differences(read_manifest(p), manifest) == []]
        if found:
            return max(found, key=lambda p: (read_manifest(p).get("created", 0), p.name)), True
        path = claim_run_dir(None, batch.name, root)
    atomic_write_json(path / GROUP_FILE, manifest)
    return path, False


def is_group(path: Path) -> bool:
    return (path / GROUP_FILE).is_file()


def read_manifest(path: Path) -> dict[str, Any]:
    """A group's group.json; UsageError naming it if it is damaged."""
    manifest = read_json(path / GROUP_FILE, "group manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UsageError(f"{path / GROUP_FILE}: not a trainer group manifest ({FORMAT})")
    return manifest


def _groups(root: Path) -> list[Path]:
    """The readable groups directly under `root` (a damaged one is nobody's batch)."""
    if not root.is_dir():
        return []
    found = []
    for path in sorted(root.iterdir()):
        if is_group(path):
            try:
                read_manifest(path)
                found.append(path)
            except TrainerError:
                continue
    return found


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return [key for key in SAME_BATCH if old.get(key) != new.get(key)]


def _check_same(path: Path, old: dict[str, Any], new: dict[str, Any]) -> None:
    differ = _differences(old, new)
    if differ:
        raise UsageError(f"{path} holds another batch (it differs in: {', '.join(differ)}); "
                         f"run the command that made it to resume it, or choose another "
                         f"--run-dir")
