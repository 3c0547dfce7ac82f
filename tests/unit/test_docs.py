"""The documentation stays true to the code: the configuration reference is generated from the config
models, every wire-rule id the code cites is defined in docs/compatibility.md, every relative link resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from serve_app import config
from serve_app.config_reference import render
from tests.conftest import ROOT

DOCS = ROOT / "docs"
# A rule id as comments and docs cite it (`R4.8`, `R7`), or as a test name spells it (`test_r4_1_to_r4_4_...`).
RULE_ID = re.compile(r"(?<![\w-])R(\d+)(?:\.(\d+))?(?![\w.-]?\d)")
RULE_ID_IN_TEST_NAME = re.compile(r"(?:(?<=test_)|(?<=_to_))r(\d+)(?:_(\d+))?(?=_)")
MARKDOWN_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_configuration_reference_is_generated_from_the_models() -> None:
    assert (DOCS / "configuration.md").read_text() == render(), "docs/configuration.md is stale: run `make docs`"


def test_every_config_field_is_described() -> None:
    """The reference has nothing but the descriptions to say: a field without one is a hole in it."""
    undescribed = [
        f"{model.__name__}.{name}"
        for model in vars(config).values()
        if isinstance(model, type) and issubclass(model, config.StrictModel) and model is not config.StrictModel
        for name, field in model.model_fields.items()
        if not field.description
    ]
    assert not undescribed


def _cited_rule_ids() -> dict[str, set[str]]:
    """Each rule id cited by the code, the tests, the configs or the docs, with where it is cited."""
    cited: dict[str, set[str]] = {}
    sources = [p for d in ("serve_app", "deployments", "tests", "load_tests") for p in (ROOT / d).rglob("*.py")]
    sources += [*(ROOT / "configs").glob("*.yaml"), *(ROOT / "k8s").glob("*.yaml"), ROOT / "README.md"]
    sources += DOCS.glob("*.md")
    for path in sources:
        text = path.read_text()
        for match in [*RULE_ID.finditer(text), *RULE_ID_IN_TEST_NAME.finditer(text)]:
            rule = f"R{match[1]}" + (f".{match[2]}" if match[2] else "")
            cited.setdefault(rule, set()).add(str(path.relative_to(ROOT)))
    return cited


def test_every_cited_wire_rule_is_defined_in_compatibility_md() -> None:
    defined = {
        f"R{m[1]}" + (f".{m[2]}" if m[2] else "")
        for m in re.finditer(r"^(?:#+ |- \*\*)R(\d+)(?:\.(\d+))?\b", (DOCS / "compatibility.md").read_text(), re.M)
    }
    undefined = {rule: sorted(where) for rule, where in _cited_rule_ids().items() if rule not in defined}
    assert not undefined, f"cited but not defined in docs/compatibility.md: {undefined}"


def test_the_rule_id_patterns_find_what_the_code_writes() -> None:
    """Guards the check above against a pattern that silently matches nothing."""
    assert [m[0] for m in RULE_ID.finditer("(R4.8) R7 and R10.1; DeepSeek-R1, R2D2, R1.2.3")] == ["R4.8", "R7", "R10.1"]
    names = "def test_r4_1_to_r4_4_stream_framing() and test_r2_sampling_seed()"
    assert [(m[1], m[2]) for m in RULE_ID_IN_TEST_NAME.finditer(names)] == [("4", "1"), ("4", "4"), ("2", None)]


@pytest.mark.parametrize("page", [ROOT / "README.md", *sorted(DOCS.glob("*.md"))], ids=lambda p: p.name)
def test_relative_links_resolve(page: Path) -> None:
    broken = [
        target
        for target in MARKDOWN_LINK.findall(page.read_text())
        if "://" not in target and not (page.parent / target).exists()
    ]
    assert not broken, f"{page.name} links to missing files: {broken}"


def test_the_json_schema_table_is_the_tested_one() -> None:
    """Issue #18: the keyword table in the docs lists exactly the rows tests/unit/test_schema_keywords.py
    checks, with the same treatments."""
    from tests.schema_keywords import KEYWORDS

    page = (ROOT / "docs" / "tools-and-structured-outputs.md").read_text()
    section = page.split("## JSON Schema support", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^\| `([^`]+)` \| ([^|]+) \|$", section, flags=re.MULTILINE)
    assert documented == [(row.name, row.treatment) for row in KEYWORDS]


def test_the_operators_guide_lists_every_metric_as_prometheus_names_it() -> None:
    """Ray prefixes application metrics with `ray_`, and counters with `_total` (issue #20)."""
    from serve_app.metrics import METRICS

    guide = (ROOT / "docs" / "operators.md").read_text()
    for metric in METRICS:
        name = f"ray_{metric.name}" + ("_total" if metric.kind == "counter" else "")
        row = next((line for line in guide.splitlines() if line.startswith(f"| `{name}` |")), None)
        assert row is not None, f"docs/operators.md has no row for {name}"
        assert f"| {metric.kind} | {', '.join(metric.labels)} |" in row, row
