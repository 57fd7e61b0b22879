"""PromQL reading shared by the monitoring and Helm chart tests: which metric names an expression reads, and which
series a rules file records."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

# PromQL words that look like metric names but are not.
KEYWORDS = {"and", "or", "unless", "bool", "offset", "group_left", "group_right", "by", "without", "on", "ignoring"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (functions, label names, keywords and numbers left out)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings (label values)
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range durations ($__rate_interval too)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)  # label lists
    expr = re.sub(r"(?<![\w:])\d+(\.\d+)?(e[+-]?\d+)?", "", expr)  # numbers, 1e6 included
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        is_function = expr[match.end() :].lstrip().startswith("(")
        if not is_function and match.group() not in KEYWORDS:
            names.add(match.group())
    return names


def rules_of(path: Path) -> list[dict]:
    """Every rule of a Prometheus rules file, recording and alerting, across its groups."""
    return [rule for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]


def recorded_series(path: Path) -> set[str]:
    """The series a Prometheus rules file records."""
    return {rule["record"] for rule in rules_of(path) if "record" in rule}
