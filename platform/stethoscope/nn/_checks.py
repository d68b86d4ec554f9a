"""Config checks shared by the nn/ blocks."""

from __future__ import annotations

from stethoscope.errors import ConfigError


def require_positive(where: str, **values: float) -> None:
    """Raise ConfigError naming ``where.name`` and its value for the first value below 1 (sizes, counts)."""
    for name, value in values.items():
        if value < 1:
            raise ConfigError(f"{where}.{name} = {value}; expected >= 1")
