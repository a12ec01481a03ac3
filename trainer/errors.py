"""The project's error types: user-facing failures with one clear message, never a traceback."""


class TrainerError(Exception):
    """Base of every error the CLI turns into a message and an exit code."""

    exit_code = 1


class UsageError(TrainerError):
    """Bad input from the user (config, data, options): exit code 2."""

    exit_code = 2


class ConfigError(UsageError):
    """A config is invalid; the message names the key, the value and what is allowed."""


class DataError(UsageError):
    """A data file is missing, corrupt or inconsistent; the message names the file."""


class FetchError(DataError):
    """Every source for a dataset failed; the message lists what was tried."""


def install_hint(extra: str) -> str:
    """How to install an extra: from the checkout (on PyPI, `trainer` is another project)."""
    return f'python -m pip install ".[{extra}]" in the trainer checkout'


class OutOfMemory(TrainerError):
    """The host or the device ran out of memory; the message says at what batch size and how
    much memory there was."""
