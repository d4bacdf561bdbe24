"""User-facing errors: one clear line, a non-zero exit, nothing already written lost."""
import math


class ConfigError(ValueError):
    """A bad config value, data file or checkpoint, explained in one line.

    The message names what is wrong (the key and value, or the path), what was expected, and how to
    fix it. The command-line entry points print it as ``error: <message>`` and exit with status 2.
    """

    def __init__(self, message: str):
        # Keep it to one line whatever the caller passed: the CLI prints exactly this.
        super().__init__(" ".join(message.split()))


class WriteError(ConfigError):
    """A file of the run could not be written (a full disk, a folder made read-only): the earlier version
    of that file is kept whole (checkpoint.atomic_write), so the run resumes from its last checkpoint."""


def reason(err: BaseException, limit: int = 200) -> str:
    """What an exception from a library says, for a one-line error: the first sentence of its first line
    (torch's archive errors go on for 500 characters of advice), or for load_state_dict, whose first line is
    only a heading, its first detail ("size mismatch for encoder.0.weight: ..."); cut at limit characters."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    text = lines[1] if lines[0].startswith("Error(s) in loading state_dict") and len(lines) > 1 \
        else lines[0].split(". ")[0]
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_choice(key: str, value, accepted) -> None:
    """Raise ConfigError unless ``value`` is one of ``accepted`` (the message names all three)."""
    if value not in accepted:
        options = ", ".join(str(a) for a in accepted)
        raise ConfigError(f"{key}={value!r} is not accepted; use one of: {options}")


def check_integer(key: str, value, minimum: int, hint: str = "") -> int:
    """Return ``value`` if it is an integer >= ``minimum``; else ConfigError naming the key (and hint)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key}={value!r} must be an integer >= {minimum}" + (f" ({hint})" if hint else ""))
    return value


def check_number(key: str, value, minimum: float | None = None, hint: str = "") -> float:
    """Return ``value`` as a float if it is a finite real number (>= ``minimum`` when given); else ConfigError."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not is_number or not math.isfinite(value) or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise ConfigError(f"{key}={value!r} must be a finite number{bound}" + (f" ({hint})" if hint else ""))
    return float(value)


def check_bool(key: str, value) -> bool:
    """Return ``value`` if it is true or false; else ConfigError (Hydra reads no, off, yes as strings, which
    would count as true)."""
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r} must be true or false")
    return value
