"""Read one policy file as plain data plus a map from key path to line number.

Rules of this module:
- YAML is untrusted input: only the safe loader is used (no Python tags, no arbitrary objects).
- Key paths are written ``policies[0].with.detectors[2]``: dots between mapping keys, ``[i]`` for
  sequence items. Every error the loader reports names such a path and the line it is on.
- Duplicate keys in one mapping are an error (YAML would silently keep the last one).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from relay.errors import PolicyConfigError

_INDEX = re.compile(r"\[\d+\]$")


def join(path: str, key: str | int) -> str:
    """The key path of ``key`` under ``path``."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def parent(path: str) -> str:
    """The key path one level up (``a.b[2]`` → ``a.b``, ``a.b`` → ``a``, ``a`` → ``""``)."""
    m = _INDEX.search(path)
    if m:
        return path[: m.start()]
    i = path.rfind(".")
    return path[:i] if i >= 0 else ""


@dataclass(slots=True)
class SourceDoc:
    """One parsed policy file: its data and where each key path starts (1-based lines)."""

    file: str
    data: dict[str, Any]
    lines: dict[str, int] = field(default_factory=dict)
    content: bytes = b""

    def line_of(self, key_path: str) -> int | None:
        """The line of ``key_path``, or of its nearest ancestor that has one."""
        p = key_path
        while True:
            line = self.lines.get(p)
            if line is not None:
                return line
            if not p:
                return None
            p = parent(p)

    def error(self, key_path: str, message: str) -> PolicyConfigError:
        return PolicyConfigError(self.file, self.line_of(key_path), key_path, message)


def _walk(node: yaml.Node, path: str, lines: dict[str, int], file: str) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise PolicyConfigError(
                    file, key_node.start_mark.line + 1, path, "mapping keys must be plain strings"
                )
            key = str(key_node.value)
            if key == "<<":
                # A YAML merge key: its entries were flattened into this mapping by the loader.
                continue
            line = key_node.start_mark.line + 1
            if key in seen:
                raise PolicyConfigError(
                    file, line, join(path, key), f"duplicate key (first set on line {seen[key]})"
                )
            seen[key] = line
            child = join(path, key)
            lines[child] = line
            _walk(value_node, child, lines, file)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            child = join(path, i)
            lines[child] = item.start_mark.line + 1
            _walk(item, child, lines, file)


def parse_text(text: str | bytes, file: str) -> SourceDoc:
    """Parse YAML text into a ``SourceDoc``.

    Raises:
        PolicyConfigError: not YAML, more than one document, or the top level is not a mapping.
    """
    raw = text.encode() if isinstance(text, str) else text
    loader = yaml.SafeLoader(raw)
    try:
        node = loader.get_single_node()
        if node is None:
            return SourceDoc(file, {}, {}, raw)
        lines: dict[str, int] = {}
        data = loader.construct_document(node)
        # Walk after constructing: the loader flattens merge keys (<<) into the node tree first.
        _walk(node, "", lines, file)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        msg = " ".join(str(x) for x in (exc.context, exc.problem) if x)
        raise PolicyConfigError(file, line, "", f"not valid YAML: {msg}") from None
    except yaml.YAMLError as exc:
        raise PolicyConfigError(file, None, "", f"not valid YAML: {exc}") from None
    finally:
        loader.dispose()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PolicyConfigError(file, 1, "", "the top level of a policy file must be a mapping")
    return SourceDoc(file, data, lines, raw)


def read_file(path: Path, display: str | None = None) -> SourceDoc:
    """Read and parse one policy file; ``display`` is the name used in errors."""
    name = display or str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PolicyConfigError(name, None, "", f"cannot read: {exc.strerror or exc}") from None
    return parse_text(raw, name)
