"""Small helpers shared by the chain and study configs."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, TypeVar

Spec = TypeVar("Spec")


def stable_hash(content: Any) -> str:
    """A short hash of JSON-serialisable ``content`` (key order does not matter)."""
    text = json.dumps(content, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def check_name(name: str, what: str) -> str:
    """``name`` if it is a safe folder name, else a ``ValueError``."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", str(name or "")):
        raise ValueError(f"{what} name {name!r} must use only letters, digits, '_', '-' and '.'")
    return name


def dataclass_from_mapping(kind: type[Spec], value: Any, where: str) -> Spec:
    """Build the dataclass ``kind`` from a mapping, naming unknown and valid keys on error.

    Args:
        kind: the dataclass.
        value: an instance of ``kind`` (returned as it is) or a mapping of its fields.
        where: where the mapping stands, for messages (``"study key 'ood.high'"``).

    Raises:
        ValueError: ``value`` is no mapping, or has keys that ``kind`` lacks.
    """
    if isinstance(value, kind):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be a mapping; got {value!r}")
    known = set(kind.__dataclass_fields__)
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(
            f"unknown keys {', '.join(unknown)} in {where}; valid keys: {', '.join(sorted(known))}"
        )
    return kind(**value)
