"""`ModelCatalog`: names and aliases to models, each serving its own endpoints (R1.5)."""

from __future__ import annotations

from serve_app.config import parse_app_config
from serve_app.protocol.errors import OpenAIError
from serve_app.routing import ModelCatalog

MODELS = [
    {"id": "chat", "source": "o/chat", "aliases": ["default"], "engine_args": {"max_model_len": 4096}},
    {
        "id": "embed",
        "source": "o/embed",
        "task": "embed",
        "deployment": {"autoscaling": {"min_replicas": 0, "max_replicas": 1}},
    },
]
CATALOG = ModelCatalog.of(parse_app_config({"models": MODELS}).models)


def test_ids_then_aliases_are_listed_and_resolved() -> None:
    assert CATALOG.names() == ["chat", "embed", "default"]
    assert CATALOG.resolve("default", "generate") == "chat"
    assert CATALOG.resolve("embed", "embed") == "embed"


def test_unknown_name_is_404_and_wrong_endpoint_is_400() -> None:
    missing = CATALOG.resolve("gpt-4o", "generate")
    assert isinstance(missing, OpenAIError) and (missing.status_code, missing.code) == (404, "model_not_found")
    wrong = CATALOG.resolve("default", "embed")
    assert isinstance(wrong, OpenAIError) and (wrong.status_code, wrong.param) == (400, "model")
    assert "'default' serves /v1/chat/completions and /v1/completions, not /v1/embeddings" in wrong.message


def test_listing_knows_what_it_may_not_ask_engines() -> None:
    """Configured context windows are known without an engine; a model that may be at zero replicas is
    never asked (the question would start a replica)."""
    assert CATALOG.context_lengths == {"chat": 4096}
    assert CATALOG.may_scale_to_zero == frozenset({"embed"})
