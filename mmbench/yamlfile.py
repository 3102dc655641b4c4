"""Reading a YAML input file (run config, cost table) strictly, in one place.

PyYAML accepts a key given twice (the last wins) and reads any bytes it can decode: a
config with ``mb: 64`` and ``mb: 2000`` would run silently with one of them. Here a
duplicate key, a file that is not UTF-8 or not YAML is a one-line ``ConfigError``.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from mmbench.errors import ConfigError


@cache
def _strict_loader() -> Any:
    """A ``SafeLoader`` subclass that refuses a mapping key given twice (PyYAML is imported
    here, when a YAML file is read, not at every start-up)."""
    import yaml

    class _StrictLoader(yaml.SafeLoader):
        """``SafeLoader`` that refuses a mapping key given twice."""

    def _mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                line = key_node.start_mark.line + 1
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice (line {line})"
                )
            seen.add(key)
        return loader.construct_mapping(node, deep=deep)

    _StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
    return _StrictLoader


def load_yaml(path: str | Path, field: str) -> Any:
    """The document in ``path``; errors name ``field`` (the flag) and the file."""
    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8")
    except OSError as exc:
        reason = "no such file" if isinstance(exc, FileNotFoundError) else exc.strerror
        raise ConfigError(field, f"cannot read {p}: {reason}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(field, f"{p}: not UTF-8 (byte {exc.start})") from None
    loader = _strict_loader()
    import yaml

    try:
        return yaml.load(text, Loader=loader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        problem = getattr(exc, "problem", None)
        raise ConfigError(field, f"{p}: not valid YAML: {problem or first}") from None
