"""Just enough PromQL to evaluate the alert rules of docs/operations.md against what a
real spoolup exports: selectors, number arithmetic, comparisons (filtering), `and`/`or`
(with `on(...)`), and increase()/rate() over two scrapes.  Other functions raise
Unsupported: a rule using them is reported as not evaluated, never as quiet.

Alert conditions are evaluated as an instant query; the rule's `for:` is how long
Prometheus waits before firing, which a test does not wait out.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

Labels = frozenset  # of (name, value)
Vector = dict  # Labels -> float


class Unsupported(Exception):
    pass


@dataclass
class Scrape:
    at: float
    samples: dict[str, Vector] | None  # None: the target did not answer (up == 0)

    @classmethod
    def of(cls, port: int, at: float) -> "Scrape":
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                text = r.read().decode()
        except (urllib.error.URLError, ConnectionError):
            return cls(at, None)
        samples: dict[str, Vector] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                samples.setdefault(s.name, {})[Labels(s.labels.items())] = s.value
        return cls(at, samples)

    def select(self, name: str, matchers: dict[str, str]) -> Vector:
        if name == "up":
            return {Labels(matchers.items()): 0.0 if self.samples is None else 1.0}
        found = (self.samples or {}).get(name, {})
        return {ls: v for ls, v in found.items() if all((k, val) in ls for k, val in matchers.items())}


TOKEN = re.compile(r"\s*(?:(?P<num>\d+(?:\.\d+)?)|(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)|(?P<str>\"[^\"]*\")"
                   r"|(?P<op>==|!=|>=|<=|[-+*/(){}\[\],=<>]))")
PRECEDENCE = {"or": 1, "and": 2, "unless": 2, "==": 3, "!=": 3, ">": 3, "<": 3, ">=": 3, "<=": 3,
              "+": 4, "-": 4, "*": 5, "/": 5}
COMPARE = {"==": lambda a, b: a == b, "!=": lambda a, b: a != b, ">": lambda a, b: a > b,
           "<": lambda a, b: a < b, ">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b}
ARITH = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b}


def _tokens(expr: str) -> list[str]:
    out, pos = [], 0
    expr = expr.strip()
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        if not m:
            raise Unsupported(f"cannot parse {expr[pos:]!r}")
        out.append(m.group(m.lastgroup))
        pos = m.end()
    return out


class _Eval:
    def __init__(self, expr: str, before: Scrape, now: Scrape):
        self.t = _tokens(expr)
        self.i = 0
        self.before, self.now = before, now

    def peek(self) -> str | None:
        return self.t[self.i] if self.i < len(self.t) else None

    def take(self, want: str | None = None) -> str:
        tok = self.t[self.i]
        if want is not None and tok != want:
            raise Unsupported(f"expected {want!r}, got {tok!r}")
        self.i += 1
        return tok

    def run(self):
        value = self.expr(0)
        if self.peek() is not None:
            raise Unsupported(f"unexpected {self.peek()!r}")
        return value

    def expr(self, min_prec: int):
        left = self.atom()
        while (op := self.peek()) in PRECEDENCE and PRECEDENCE[op] > min_prec:
            self.take()
            on = None
            if self.peek() == "on":
                self.take()
                self.take("(")
                on = []
                while self.peek() != ")":
                    tok = self.take()
                    if tok != ",":
                        on.append(tok)
                self.take(")")
            right = self.expr(PRECEDENCE[op])
            left = self.binary(op, left, right, on)
        return left

    def atom(self):
        tok = self.take()
        if tok == "(":
            v = self.expr(0)
            self.take(")")
            return v
        if re.fullmatch(r"\d+(?:\.\d+)?", tok):
            return float(tok)
        if self.peek() == "(":
            return self.call(tok)
        return self.selector(tok)

    def selector(self, name: str, scrape: Scrape | None = None) -> Vector:
        matchers = {}
        if self.peek() == "{":
            self.take("{")
            while self.peek() != "}":
                label = self.take()
                if label == ",":
                    continue
                self.take("=")
                matchers[label] = self.take().strip('"')
            self.take("}")
        return (scrape or self.now).select(name, matchers)

    def call(self, fn: str) -> Vector:
        if fn not in ("increase", "rate"):
            raise Unsupported(f"function {fn}()")
        self.take("(")
        name = self.take()
        start = self.i
        now = self.selector(name, self.now)
        self.i = start
        before = self.selector(name, self.before)
        self.take("[")
        while self.take() != "]":
            pass
        self.take(")")
        dt = self.now.at - self.before.at
        out = {}
        for ls, v in now.items():
            delta = v - before.get(ls, 0.0)  # a series born between the scrapes started at 0
            out[ls] = delta / dt if fn == "rate" else delta
        return out

    @staticmethod
    def binary(op: str, left, right, on):
        if isinstance(left, float) and isinstance(right, float):
            if op in ARITH:
                return ARITH[op](left, right)
            raise Unsupported(f"scalar {op} scalar")
        if op in ("and", "or", "unless"):
            def key(ls):
                return frozenset((k, v) for k, v in ls if on is None or k in on)
            rkeys = {key(ls) for ls in right}
            if op == "and":
                return {ls: v for ls, v in left.items() if key(ls) in rkeys}
            if op == "unless":
                return {ls: v for ls, v in left.items() if key(ls) not in rkeys}
            lkeys = {key(ls) for ls in left}
            return {**left, **{ls: v for ls, v in right.items() if key(ls) not in lkeys}}
        if op in COMPARE:
            if isinstance(right, float):
                return {ls: v for ls, v in left.items() if COMPARE[op](v, right)}
            if isinstance(left, float):
                return {ls: v for ls, v in right.items() if COMPARE[op](left, v)}
            return {ls: v for ls, v in left.items() if ls in right and COMPARE[op](v, right[ls])}
        raise Unsupported(f"vector {op}")


def evaluate(expr: str, before: Scrape, now: Scrape) -> Vector:
    """The instant vector of `expr` at `now` (`before`: the earlier scrape increase() needs)."""
    value = _Eval(expr, before, now).run()
    if isinstance(value, float):
        raise Unsupported("a scalar alert condition")
    return value


def firing(rules: list[dict], before: Scrape, now: Scrape) -> tuple[set[str], set[str]]:
    """(alerts whose condition holds, alerts that could not be evaluated)."""
    fired, skipped = set(), set()
    for rule in rules:
        try:
            if evaluate(rule["expr"], before, now):
                fired.add(rule["alert"])
        except Unsupported:
            skipped.add(rule["alert"])
    return fired, skipped
