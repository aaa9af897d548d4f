"""``SectionReader``: the keys of one TOML table read with their key path, so each error names the file,
the key and what was expected, and any key nobody asked for is reported as unknown.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from types import EllipsisType
from typing import Any, TypeVar

from relayd.config_model import CREDENTIAL_NAME, SecretRef
from relayd.errors import ConfigError
from relayd.units import parse_duration, parse_size

T = TypeVar("T")


class SectionReader:
    """Read the keys of one TOML table, remembering which were read so the rest are reported."""

    def __init__(self, data: Mapping[str, Any], path: str, file: Path, seen: set[str] | None = None) -> None:
        self._data = data
        self._path = path
        self._file = file
        self._read: set[str] = set()
        self.seen: set[str] = seen if seen is not None else set()

    def _key(self, key: str) -> str:
        return f"{self._path}.{key}" if self._path else key

    def error(self, key: str, expected: str, got: object = ...) -> ConfigError:
        """Return a ConfigError naming the file, the key and what was expected."""
        found = "" if got is ... else f", got {got!r}"
        return ConfigError(f"{self._file}: {self._key(key)}: expected {expected}{found}")

    def _get(self, key: str, default: object) -> Any:
        self._read.add(key)
        self.seen.add(self._key(key))
        if key in self._data:
            return self._data[key]
        if default is ...:
            raise ConfigError(f"{self._file}: {self._key(key)}: required key is missing")
        return default

    def _convert(self, key: str, value: Any, convert: Callable[[Any], T], expected: str) -> T:
        try:
            return convert(value)
        except (ValueError, TypeError) as exc:
            raise self.error(key, f"{expected} ({exc})", value) from exc

    def string(self, key: str, default: str | EllipsisType = ..., *, choices: tuple[str, ...] = ()) -> str:
        value = self._get(key, default)
        if not isinstance(value, str):
            raise self.error(key, "a string", value)
        if choices and value not in choices:
            raise self.error(key, "one of " + ", ".join(repr(c) for c in choices), value)
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, "true or false", value)
        return value

    def integer(
        self, key: str, default: int, *, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        value = self._get(key, default)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.error(key, "a whole number", value)
        if minimum is not None and value < minimum:
            raise self.error(key, f"a number ≥ {minimum}", value)
        if maximum is not None and value > maximum:
            raise self.error(key, f"a number ≤ {maximum}", value)
        return value

    def number(self, key: str, default: float, *, minimum: float = 0.0) -> float:
        value = self._get(key, default)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise self.error(key, "a number", value)
        if value < minimum:
            raise self.error(key, f"a number ≥ {minimum}", value)
        return float(value)

    def size(self, key: str, default: str | int, *, minimum: int = 0) -> int:
        value = self._convert(key, self._get(key, default), parse_size, "a size such as '64 MiB'")
        if value < minimum:
            raise self.error(key, f"a size of at least {minimum} bytes", value)
        return value

    def duration(self, key: str, default: str | float, *, minimum: float = 0.0) -> float:
        value = self._convert(
            key, self._get(key, default), parse_duration, "a duration such as '30s' or '1h'"
        )
        if value < minimum:
            raise self.error(key, f"a duration of at least {minimum}s", value)
        return value

    def path(self, key: str, default: str | EllipsisType | None = ...) -> Path | None:
        value = self._get(key, default)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise self.error(key, "a path", value)
        path = Path(value).expanduser()
        if not path.is_absolute():
            path = (self._file.parent / path).resolve()
        return path

    def required_path(self, key: str, default: str) -> Path:
        path = self.path(key, default)
        if path is None:
            raise self.error(key, "a path", "")
        return path

    def strings(self, key: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        value = self._get(key, list(default))
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise self.error(key, "a list of strings", value)
        return tuple(value)

    def secret(self, key: str, default_env: str = "") -> SecretRef:
        """Read a secret given as ``key``, ``key_env``, ``key_file`` or ``key_credential`` (one of them)."""
        value = self._get(key, "")
        env = self._get(f"{key}_env", default_env)
        file_value = self._get(f"{key}_file", "")
        credential = self._get(f"{key}_credential", "")
        for name, item in (
            (key, value),
            (f"{key}_env", env),
            (f"{key}_file", file_value),
            (f"{key}_credential", credential),
        ):
            if not isinstance(item, str):
                raise self.error(name, "a string", item)
        explicit = [
            name
            for name, item in ((key, value), (f"{key}_file", file_value), (f"{key}_credential", credential))
            if item
        ]
        if len(explicit) > 1:
            raise self.error(explicit[1], f"only one of {', '.join(explicit)}")
        if credential and not CREDENTIAL_NAME.match(credential):
            raise self.error(
                f"{key}_credential", "a credential name (letters, digits, '_.@-', no '/')", credential
            )
        file_path = self.path(f"{key}_file", "") if file_value else None
        if explicit:
            env = env if f"{key}_env" in self._data else ""
        return SecretRef(
            key=self._key(key),
            value=value or None,
            env=env or None,
            file=file_path,
            credential=credential or None,
        )

    def credential(self, key: str) -> str:
        """Read the name of a systemd credential ('' when unset): a plain file name."""
        name = self.string(key, "")
        if name and not CREDENTIAL_NAME.match(name):
            raise self.error(key, "a credential name (letters, digits, '_.@-', no '/')", name)
        return name

    def table(self, key: str) -> SectionReader:
        value = self._get(key, {})
        if not isinstance(value, dict):
            raise self.error(key, "a table", value)
        return SectionReader(value, self._key(key), self._file, self.seen)

    def names(self) -> list[str]:
        """Return the keys present in this table."""
        return list(self._data)

    def take_all(self) -> dict[str, Any]:
        """Return the whole table as data, marking every key as read."""
        for key in self._data:
            self._get(key, None)
        return dict(self._data)

    def finish(self) -> None:
        """Raise ConfigError for any key in this table that nothing read."""
        unknown = sorted(set(self._data) - self._read)
        if unknown:
            names = ", ".join(self._key(k) for k in unknown)
            raise ConfigError(
                f"{self._file}: unknown key {names} (see config.example.toml for the valid keys)"
            )
