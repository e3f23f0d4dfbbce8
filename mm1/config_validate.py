"""Checks a parsed workflow document against the dataclass schema and says exactly what is wrong.

OmegaConf's own errors lose the key path inside lists and print stack traces; users get instead one
`ConfigError` naming the file, the line, the key path and what was expected, with a did-you-mean for keys and
choices. Line numbers come from the YAML node tree (`line_index`).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any

import yaml

from mm1.errors import UserFacingError


def choice(default: str, *options: str, hint: str = "") -> Any:
    """A string field restricted to `options`, checked by SchemaChecker with a did-you-mean; `hint` is added
    to the error for a value that is not a string (e.g. the old spelling of a key that was a bool)."""
    assert default in options
    return dataclasses.field(default=default, metadata={"choices": options, "hint": hint})


class ConfigError(UserFacingError, ValueError):
    """A user mistake in a workflow file or its overrides."""

    def __init__(self, source: str, key: str, message: str, line: int | None = None):
        self.source, self.key, self.line, self.message = source, key, line, message
        where = f"{source}:{line}" if line else source
        super().__init__(f"{where}: {key + ': ' if key else ''}{message}")


def line_index(text: str) -> dict[str, int]:
    """Map dotted key paths (list items as `groups[0]`) to their 1-based line in the YAML text."""
    lines: dict[str, int] = {}

    def walk(node: yaml.Node, path: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                child = f"{path}.{key_node.value}" if path else str(key_node.value)
                lines[child] = key_node.start_mark.line + 1
                walk(value_node, child)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                child = f"{path}[{i}]"
                lines[child] = item.start_mark.line + 1
                walk(item, child)

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is not None:
        lines[""] = root.start_mark.line + 1
        walk(root, "")
    return lines


def _did_you_mean(word: str, options: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(hint)[0])}"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(hint):
        return f"a mapping ({hint.__name__})"
    if hint is type(None):
        return "null"
    if hint is Any:
        return "any value"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(hint, str(hint))


class SchemaChecker:
    """Walks `value` against a dataclass type, raising ConfigError at the first mistake."""

    def __init__(self, source: str, lines: dict[str, int], overrides: dict[str, str] | None = None):
        self.source, self.lines, self.overrides = source, lines, overrides or {}

    def fail(self, path: str, message: str) -> typing.NoReturn:
        for key, text in self.overrides.items():
            if path == key or path.startswith(key + ".") or path.startswith(key + "["):
                raise ConfigError(f"{self.source} (override '{text}')", path, message)
        line = self.lines.get(path)
        if line is None:  # a key inside a value we could not index: fall back to the nearest parent
            parent = path
            while line is None and ("." in parent or "[" in parent):
                parent = parent.rsplit(".", 1)[0] if "." in parent else parent.rsplit("[", 1)[0]
                line = self.lines.get(parent)
        raise ConfigError(self.source, path, message, line)

    def check(self, value: Any, hint: Any, path: str, metadata: typing.Mapping | None = None) -> None:
        origin = typing.get_origin(hint)
        if hint is Any:
            return
        if origin in (typing.Union, types.UnionType):
            args = typing.get_args(hint)
            if value is None and type(None) in args:
                return
            non_null = [a for a in args if a is not type(None)]
            return self.check(value, non_null[0], path, metadata)
        if value is None:
            self.fail(path, f"must be {_type_name(hint)}, got null")
        if dataclasses.is_dataclass(hint):
            return self.check_dataclass(value, hint, path)
        if origin is list:
            if not isinstance(value, list):
                self.fail(path, f"must be {_type_name(hint)}, got {_describe(value)}")
            (item_hint,) = typing.get_args(hint)
            for i, item in enumerate(value):
                self.check(item, item_hint, f"{path}[{i}]")
            return
        if origin is dict:
            if not isinstance(value, dict):
                self.fail(path, f"must be a mapping, got {_describe(value)}")
            _, value_hint = typing.get_args(hint)
            for key, item in value.items():
                self.check(item, value_hint, f"{path}.{key}")
            return
        self.check_scalar(value, hint, path, metadata)

    def check_scalar(self, value: Any, hint: Any, path: str, metadata: typing.Mapping | None) -> None:
        ok = {
            bool: isinstance(value, bool),
            int: isinstance(value, int) and not isinstance(value, bool),
            float: isinstance(value, (int, float)) and not isinstance(value, bool),
            str: isinstance(value, str),
        }.get(hint, True)
        choices = (metadata or {}).get("choices")
        if not ok and choices:
            extra = (metadata or {}).get("hint")
            self.fail(
                path,
                f"must be one of: {', '.join(choices)}; got {_describe(value)}"
                + (f" ({extra})" if extra else ""),
            )
        if not ok:
            self.fail(path, f"must be {_type_name(hint)}, got {_describe(value)}")
        if choices and value not in choices:
            options = ", ".join(choices)
            self.fail(
                path,
                f"'{value}' is not a valid choice; expected one of: {options}.{_did_you_mean(str(value), choices)}",
            )

    def check_dataclass(self, value: Any, cls: type, path: str) -> None:
        if not isinstance(value, dict):
            self.fail(path or "(top level)", f"must be {_type_name(cls)}, got {_describe(value)}")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if not f.name.startswith("_")}
        for key, item in value.items():
            child = f"{path}.{key}" if path else str(key)
            if key not in fields:
                self.fail(
                    child,
                    f"unknown key '{key}' in {cls.__name__}.{_did_you_mean(str(key), fields)}"
                    f" Valid keys: {', '.join(fields)}.",
                )
            self.check(item, hints[key], child, fields[key].metadata)
        for name, f in fields.items():
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if (required or f.default == "???") and name not in value:
                self.fail(
                    f"{path}.{name}" if path else name, f"required key is missing ({_type_name(hints[name])})"
                )


def _describe(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return f"a {'mapping' if isinstance(value, dict) else 'list'}"
    return f"{type(value).__name__} {value!r}"
