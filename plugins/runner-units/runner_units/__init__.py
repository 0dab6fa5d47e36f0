"""runner-units: a unit conversion tool for yaml-agent-runner."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import Field

from runner import hookimpl, tool

# Factor to the base unit of each dimension (metre, kilogram, second).
_LINEAR: dict[str, tuple[str, float]] = {
    "mm": ("length", 0.001), "cm": ("length", 0.01), "m": ("length", 1.0),
    "km": ("length", 1000.0), "in": ("length", 0.0254), "ft": ("length", 0.3048),
    "yd": ("length", 0.9144), "mi": ("length", 1609.344),
    "g": ("mass", 0.001), "kg": ("mass", 1.0), "lb": ("mass", 0.45359237), "oz": ("mass", 0.028349523125),
    "s": ("time", 1.0), "min": ("time", 60.0), "h": ("time", 3600.0), "day": ("time", 86400.0),
}
_ALIASES = {"miles": "mi", "mile": "mi", "kilometres": "km", "kilometers": "km", "metres": "m",
            "meters": "m", "feet": "ft", "foot": "ft", "inches": "in", "pounds": "lb",
            "kilograms": "kg", "grams": "g", "hours": "h", "minutes": "min", "seconds": "s",
            "days": "day", "celsius": "c", "fahrenheit": "f", "kelvin": "k"}
_TEMPS = {"c", "f", "k"}
_QUERY = re.compile(r"^\s*(-?[\d.]+)\s*°?\s*([a-zA-Z]+)\s+(?:to|in|as)\s+°?\s*([a-zA-Z]+)\s*$")


def _unit(name: str) -> str:
    u = name.lower()
    return _ALIASES.get(u, u)


def _to_kelvin(v: float, u: str) -> float:
    return {"c": v + 273.15, "f": (v - 32) * 5 / 9 + 273.15, "k": v}[u]


def _from_kelvin(v: float, u: str) -> float:
    return {"c": v - 273.15, "f": (v - 273.15) * 9 / 5 + 32, "k": v}[u]


def convert_value(value: float, src: str, dst: str) -> float:
    s, d = _unit(src), _unit(dst)
    if s in _TEMPS and d in _TEMPS:
        return _from_kelvin(_to_kelvin(value, s), d)
    if s not in _LINEAR or d not in _LINEAR:
        bad = s if s not in _LINEAR and s not in _TEMPS else d
        known = ", ".join(sorted([*_LINEAR, *_TEMPS]))
        raise ValueError(f"unknown unit {bad!r}; known units: {known}")
    if _LINEAR[s][0] != _LINEAR[d][0]:
        raise ValueError(f"cannot convert {_LINEAR[s][0]} ({s}) to {_LINEAR[d][0]} ({d})")
    return value * _LINEAR[s][1] / _LINEAR[d][1]


@tool(name="units")
def units(query: Annotated[str, Field(description="a conversion such as 10 km to mi")]) -> str:
    """Converts a quantity between units of length, mass, time or temperature."""
    m = _QUERY.match(query)
    if not m:
        raise ValueError("write the conversion as '<number> <unit> to <unit>', e.g. 10 km to mi")
    value, src, dst = float(m.group(1)), m.group(2), m.group(3)
    result = convert_value(value, src, dst)
    return f"{value:g} {src} = {result:.6g} {dst}"


@hookimpl
def register_tools(register: Any) -> None:
    register(units)
