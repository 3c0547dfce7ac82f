"""docs/configuration.md, generated from the config models: their docstrings and field descriptions are
the one place the reference is written. `make docs` rewrites the file; a unit test fails when it is stale.

    python -m serve_app.config_reference > docs/configuration.md
"""

from __future__ import annotations

import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from serve_app.config import AppConfig

INTRO = """\
# Configuration reference

<!-- Generated from serve_app/config.py by `make docs`; edit the models' descriptions, not this file. -->

A configuration is a Ray Serve config file (`configs/*.yaml`): Ray's own `http_options` (host, port),
`proxy_location` and `controller_options` (the environment Serve's controller runs with: see
[deployment](deployment.md)), and one application whose `import_path` is `serve_app:build_app` and whose
`args` are described below. `make serve CONFIG=...`, `serve run` and `serve deploy` all take such a file.

Every level rejects unknown keys with an error naming the key, for example
`models.0.engine_args.max_model_length: unknown key (check its spelling in docs/configuration.md)`.
"""


def render() -> str:
    """The whole reference: one section per config model, in the order a reader meets them."""
    sections = [INTRO]
    for path, model in _models_by_path("args", AppConfig):
        sections.append(_section(path, model))
    return "\n".join(sections)


def _models_by_path(path: str, model: type[BaseModel]) -> list[tuple[str, type[BaseModel]]]:
    """Each model once, under the first path where it appears (later places link to it), depth first."""
    found: list[tuple[str, type[BaseModel]]] = []
    pending = [(path, model)]
    while pending:
        path, model = pending.pop(0)
        if any(seen is model for _, seen in found):
            continue
        found.append((path, model))
        for name, field in model.model_fields.items():
            nested = _nested_model(field.annotation)
            if nested is not None:
                pending.append((f"{path}.{name}{'[]' if _is_list(field.annotation) else ''}", nested))
    return found


def _section(path: str, model: type[BaseModel]) -> str:
    lines = [f"## `{path}`", "", _paragraph(model.__doc__ or ""), "", "| key | type | default | meaning |"]
    lines.append("| --- | --- | --- | --- |")
    for name, field in model.model_fields.items():
        description = (field.description or "").replace("|", "\\|")
        lines.append(f"| `{name}` | {_type(field.annotation)} | {_default(field)} | {description} |")
    return "\n".join(lines) + "\n"


def _paragraph(docstring: str) -> str:
    """A docstring as one markdown paragraph (its line breaks are the source's wrapping, not the reader's)."""
    return " ".join(line.strip() for line in docstring.strip().splitlines())


def _type(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:  # a constrained type: named by the type it constrains
        return _type(args[0])
    if origin is Literal:
        return " \\| ".join(f"`{value}`" for value in args)
    if origin in (Union, types.UnionType):
        options = [_type(arg) for arg in args if arg is not type(None)]
        return " \\| ".join(options) + (" \\| none" if type(None) in args else "")
    if origin is list:
        return f"list of {_type(args[0])}"
    if origin is dict:
        return "mapping"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"[{annotation.__name__}](#{_anchor(annotation)})"
    names = {int: "integer", float: "number", str: "string", bool: "boolean", Path: "path"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _default(field: FieldInfo) -> str:
    extra = field.json_schema_extra
    if isinstance(extra, dict) and isinstance(extra.get("default_shown"), str):
        return str(extra["default_shown"])
    if field.is_required():
        return "(required)"
    value = field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]
    if value is None:
        return "none"
    if isinstance(value, BaseModel):
        changed = value.model_dump(include=value.model_fields_set)
        return ", ".join(f"`{key}: {_yaml_scalar(v)}`" for key, v in changed.items()) or "its defaults"
    return f"`{_yaml_scalar(value)}`"


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list | dict) and not value:
        return "[]" if isinstance(value, list) else "{}"
    return str(value)


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        if (nested := _nested_model(arg)) is not None:
            return nested
    return None


def _is_list(annotation: Any) -> bool:
    return get_origin(annotation) is list


def _anchor(model: type[BaseModel]) -> str:
    """The GitHub anchor of the section that documents `model`."""
    path = next(path for path, seen in _models_by_path("args", AppConfig) if seen is model)
    return "".join(c for c in path.lower() if c.isalnum() or c in "-_")


if __name__ == "__main__":
    print(render(), end="")
