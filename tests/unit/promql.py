"""PromQL reading shared by the monitoring and Helm chart tests: which metric names an expression reads."""

from __future__ import annotations

import re

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
