"""Gate expressions for CI: `safety.refusal_rate.delta >= -0.05`, parsed safely (no eval).

Grammar: NAME OP EXPR [OP EXPR ...] where NAME is suite.metric.field (field: base, tuned, delta,
ci_low, ci_high) and EXPR is arithmetic (+ - * /, parentheses, unary minus) over numbers and such
names. Comparisons: < <= > >= == !=; `and` / `or` combine them.
"""

from __future__ import annotations

import ast
import difflib
import operator

from ..errors import TunelensError, UnknownMetric

FIELDS = ("base", "tuned", "delta", "ci_low", "ci_high")
_CMP = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
        ast.Eq: operator.eq, ast.NotEq: operator.ne}
_BIN = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def metric_values(ledger: dict) -> dict[str, float | None]:
    """Every gateable name in a ledger: suite.metric.field -> value."""
    out = {}
    for suite, block in ledger["suites"].items():
        for e in block.get("entries", []):
            ci = e.get("ci95") or [None, None]
            vals = {"base": e["base"], "tuned": e["tuned"], "delta": e["delta"], "ci_low": ci[0], "ci_high": ci[1]}
            for f in FIELDS:
                out[f"{suite}.{e['metric']}.{f}"] = vals[f]
    return out


def validate(expr: str) -> None:
    """Check a gate's form before anything runs: a comparison (or comparisons joined by and/or) over numbers,
    arithmetic and names of the form suite.metric.field. Whether the metric exists is known only from a ledger
    (`check`); everything else is caught here, before models load and suites run."""
    try:
        tree = ast.parse(expr, mode="eval").body
    except SyntaxError:
        raise TunelensError(f"gate '{expr}' does not parse; write e.g. \"safety.refusal_rate.delta >= -0.05\"") from None

    def comparison(node) -> bool:
        if isinstance(node, ast.BoolOp):
            return all(comparison(v) for v in node.values)
        return isinstance(node, ast.Compare) and all(type(op) in _CMP for op in node.ops)

    if not comparison(tree):
        raise TunelensError(f"gate '{expr}' is not a comparison; write NAME OP VALUE, e.g. "
                            "\"safety.refusal_rate.delta >= -0.05\"")
    for node in ast.walk(tree):
        if isinstance(node, (ast.Attribute, ast.Name)):
            name = _dotted(node)
            if name is None:
                raise TunelensError(f"gate '{expr}': only metric names, numbers, arithmetic and comparisons are "
                                    "allowed")
            continue
        if isinstance(node, ast.Constant) and not (isinstance(node.value, (int, float))
                                                   and not isinstance(node.value, bool)):
            raise TunelensError(f"gate '{expr}': {node.value!r} is not a number")
        if not isinstance(node, (ast.Compare, ast.BoolOp, ast.BinOp, ast.UnaryOp, ast.Constant, ast.Load,
                                 ast.And, ast.Or, ast.USub, ast.UAdd, *_CMP, *_BIN)):
            raise TunelensError(f"gate '{expr}': only metric names, numbers, arithmetic and comparisons are allowed")
        if isinstance(node, ast.BinOp) and type(node.op) not in _BIN:
            raise TunelensError(f"gate '{expr}': only + - * / are allowed")
    for name in _outer_names(tree):
        parts = name.split(".")
        if len(parts) < 3 or parts[-1] not in FIELDS:
            raise TunelensError(f"gate '{expr}': '{name}' is not a metric name; write suite.metric.field with field "
                                f"one of {', '.join(FIELDS)} (e.g. safety.refusal_rate.delta)")


def _outer_names(node):
    """The whole dotted names in an expression (a.b.c once, not also a.b and a)."""
    if isinstance(node, (ast.Attribute, ast.Name)):
        yield _dotted(node)
        return
    for child in ast.iter_child_nodes(node):
        yield from _outer_names(child)


def _dotted(node) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def check(expr: str, values: dict[str, float | None]) -> bool:
    """True if the gate passes. Raises TunelensError for syntax errors and unknown names."""
    try:
        tree = ast.parse(expr, mode="eval").body
    except SyntaxError:
        raise TunelensError(f"gate '{expr}' does not parse; write e.g. \"safety.refusal_rate.delta >= -0.05\"") from None

    def ev(node):
        if isinstance(node, ast.BoolOp):
            vals = [ev(v) for v in node.values]
            return all(vals) if isinstance(node.op, ast.And) else any(vals)
        if isinstance(node, ast.Compare):
            left = ev(node.left)
            for op, right_node in zip(node.ops, node.comparators):
                right = ev(right_node)
                if type(op) not in _CMP:
                    raise TunelensError(f"gate '{expr}': unsupported comparison")
                if left is None or right is None:
                    return False  # a missing value never passes a gate
                if not _CMP[type(op)](left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.BinOp) and type(node.op) in _BIN:
            a, b = ev(node.left), ev(node.right)
            return None if a is None or b is None else _BIN[type(node.op)](a, b)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = ev(node.operand)
            return None if v is None else (-v if isinstance(node.op, ast.USub) else v)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return float(node.value)
        name = _dotted(node)
        if name is not None:
            if name not in values:
                hint = difflib.get_close_matches(name, values, n=3)
                raise UnknownMetric(f"gate '{expr}': unknown metric '{name}'"
                                    + (f"; did you mean {', '.join(hint)}?" if hint else "")
                                    + f" Valid names: {', '.join(sorted(values))}", name, values)
            return values[name]
        raise TunelensError(f"gate '{expr}': only metric names, numbers, arithmetic and comparisons are allowed")

    result = ev(tree)
    if not isinstance(result, bool):
        raise TunelensError(f"gate '{expr}' is not a comparison (e.g. \"task.accuracy.delta >= 0\")")
    return result


# ---------------------------------------------------------------- gates with three outcomes

OUTCOMES = ("pass", "fail", "inconclusive")  # exit codes 0, 3, 4


def metric_intervals(ledger: dict) -> dict[str, tuple[float | None, float | None, str]]:
    """Every gateable name -> (low, high, where the range comes from). A headline metric's delta ranges over its
    anytime-valid confidence sequence; another entry's delta over its fixed-n interval (when it has one);
    everything else is a point."""
    out = {}
    for suite, block in ledger["suites"].items():
        for e in block.get("entries", []):
            ci = e.get("ci95") or [None, None]
            for f, v in (("base", e["base"]), ("tuned", e["tuned"]), ("ci_low", ci[0]), ("ci_high", ci[1])):
                out[f"{suite}.{e['metric']}.{f}"] = (v, v, "value")
            name = f"{suite}.{e['metric']}.delta"
            if e.get("role") == "headline" and e.get("cs95"):
                out[name] = (*e["cs95"], "confidence sequence")
            elif e.get("ci95") and e["ci95"][0] is not None:
                out[name] = (*e["ci95"], "fixed-n interval")
            else:
                out[name] = (e["delta"], e["delta"], "value")
    return out


def evaluate(expr: str, ledger: dict) -> dict:
    """A gate's outcome on a ledger: pass when the condition holds for every value its metrics' ranges allow,
    fail when it holds for none, inconclusive otherwise (or when a value is missing). Returns {"expr",
    "outcome", "passed", "why"}; `why` names the ranges used."""
    values = metric_intervals(ledger)
    point = {k: v[0] for k, v in values.items()}
    check(expr, point)  # unknown names and syntax: the same errors as before
    tree = ast.parse(expr, mode="eval").body
    used: dict[str, str] = {}

    def iv(node):
        if isinstance(node, ast.Constant):
            return (float(node.value), float(node.value))
        name = _dotted(node)
        if name is not None:
            lo, hi, src = values[name]
            used[name] = src
            return None if lo is None or hi is None else (float(lo), float(hi))
        if isinstance(node, ast.UnaryOp):
            v = iv(node.operand)
            return None if v is None else ((-v[1], -v[0]) if isinstance(node.op, ast.USub) else v)
        if isinstance(node, ast.BinOp):
            a, b = iv(node.left), iv(node.right)
            if a is None or b is None:
                return None
            if isinstance(node.op, ast.Add):
                return (a[0] + b[0], a[1] + b[1])
            if isinstance(node.op, ast.Sub):
                return (a[0] - b[1], a[1] - b[0])
            if isinstance(node.op, ast.Div):
                if b[0] <= 0 <= b[1]:
                    return None
                b = (1 / b[1], 1 / b[0])
            prods = [x * y for x in a for y in b]
            return (min(prods), max(prods))
        raise TunelensError(f"gate '{expr}': only metric names, numbers, arithmetic and comparisons are allowed")

    def cmp(op, a, b):  # True / False / None (undetermined)
        if a is None or b is None:
            return None
        if isinstance(op, (ast.Gt, ast.GtE)):
            a, b, op = b, a, (ast.Lt() if isinstance(op, ast.Gt) else ast.LtE())
        if isinstance(op, (ast.Lt, ast.LtE)):
            f = _CMP[type(op)]
            return True if f(a[1], b[0]) else False if not f(a[0], b[1]) else None
        disjoint = a[1] < b[0] or b[1] < a[0]
        same_point = a[0] == a[1] == b[0] == b[1]
        eq = True if same_point else False if disjoint else None
        return eq if isinstance(op, ast.Eq) else (None if eq is None else not eq)

    def ev(node):
        if isinstance(node, ast.BoolOp):
            vals = [ev(v) for v in node.values]
            if isinstance(node.op, ast.And):
                return False if False in vals else None if None in vals else True
            return True if True in vals else None if None in vals else False
        left, result = iv(node.left), True
        for op, right_node in zip(node.ops, node.comparators):
            right = iv(right_node)
            r = cmp(op, left, right)
            result = False if (result is False or r is False) else None if (result is None or r is None) else True
            left = right
        return result

    r = ev(tree)
    outcome = "pass" if r is True else "fail" if r is False else "inconclusive"
    why = "; ".join(f"{n} over its {src}" for n, src in used.items() if src != "value")
    if any(src == "fixed-n interval" for src in used.values()):
        why += " (not a sequential metric: judged on its fixed-n interval)"
    return {"expr": expr, "outcome": outcome, "passed": outcome == "pass", "why": why or None}
