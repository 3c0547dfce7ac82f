"""Tool-call parsers, one module per model format, behind a named registry (`create_parser(name, tools)`)."""

from serve_app.tool_parsers import harmony, hermes, llama3_json, mistral, pythonic, qwen3_coder  # noqa: F401  (each module registers its format)
from serve_app.tool_parsers.base import create_parser, parse_complete, parser_names

__all__ = ["create_parser", "parse_complete", "parser_names"]
