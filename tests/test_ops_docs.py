"""docs/operations.md stays complete and linked: every message spoolup can print is in
its troubleshooting section, every metric is documented, and its links resolve."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OPS = ROOT / "docs" / "operations.md"
LOG_LEVELS = {"warning", "error", "critical", "exception"}
EXCEPTIONS = {"JournalError", "RecoveryProblem", "OSError", "S3Error"}
SKIP_FILES = {"config.py", "keys.py"}  # option errors: one documented row ("configuration error in FILE")


def _text(node: ast.AST) -> str | None:
    """A message's longest literal fragment (f-strings: the longest constant part)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = [v.value for v in node.values if isinstance(v, ast.Constant)]
        return max(parts, key=len) if parts else None
    return None


def printed_messages() -> list[tuple[str, int, str]]:
    """(file, line, message fragment) of what spoolup prints or logs as a problem:
    warning/error log events, stderr output, recover's problems and notes, the reasons a
    spool file is not read, and the messages of the exceptions the CLI prints."""
    out = []
    for path in sorted((ROOT / "spoolup").glob("*.py")):
        if path.name in SKIP_FILES:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            f, arg = node.func, node.args[0]
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if name == "quarantine" and len(node.args) >= 3:
                arg = node.args[2]
            elif name == "_forget" and len(node.args) >= 2:
                arg = node.args[1]
            elif not (
                (isinstance(f, ast.Attribute) and name in LOG_LEVELS)
                or (name == "print" and any(k.arg == "file" for k in node.keywords))
                or (name == "write" and ast.unparse(f.value) == "sys.stderr")
                or (isinstance(f, ast.Attribute) and name in ("problem", "note"))
                or name in EXCEPTIONS
            ):
                continue
            text = _text(arg)
            if text is None:
                continue
            text = " ".join(text.split()).strip(" .:;,()'\"")
            if len(text) >= 12:
                out.append((path.name, node.lineno, text[:50]))
    return out


def test_every_message_is_in_the_troubleshooting_section():
    doc = OPS.read_text()
    section = " ".join(doc[doc.index("## Troubleshooting"):].split())
    messages = printed_messages()
    assert len(messages) > 30  # the extraction works
    missing = [f"{f}:{line}: {text!r}" for f, line, text in messages if text not in section]
    assert missing == [], "add these messages to the troubleshooting tables of docs/operations.md:\n" + \
        "\n".join(missing)


def test_every_quarantine_reason_has_a_row():
    from spoolup.quarantine import REASONS

    doc = OPS.read_text()
    section = doc[doc.index("### Quarantined spool entries"):]
    section = section[:section.index("\n### ", 5)]
    rows = re.findall(r"^\| `([a-z-]+)` \|", section, re.M)
    assert sorted(rows) == sorted(REASONS), "one row per reason of spoolup/quarantine.py"
    text = " ".join(section.replace("`", "").split()).lower()
    for reason, rule in REASONS.items():
        assert rule.what_to_do.split(";")[0].lower() in text, reason


def test_every_metric_is_documented():
    source = (ROOT / "spoolup" / "metrics.py").read_text()
    names = set(re.findall(r'"(spoolup_[a-z_]+)"', source))
    assert len(names) > 15
    doc = OPS.read_text()
    assert [n for n in sorted(names) if n not in doc] == []


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors."""
    out = set()
    for m in re.finditer(r"^#+\s+(.*)$", markdown, re.M):
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        out.add(slug)
    return out


def test_links_resolve_and_readme_links_here():
    readme = (ROOT / "README.md").read_text()
    assert "(docs/operations.md)" in readme
    doc = OPS.read_text()
    links = re.findall(r"\]\(([^)\s]+)\)", doc)
    assert "../README.md#migrating-from-s3" in links
    assert "status.schema.json" in links and "../contrib/systemd/spoolup.service" in links
    for link in links:
        if link.startswith(("http://", "https://")):
            continue
        target, _, anchor = link.partition("#")
        path = (OPS.parent / target).resolve() if target else OPS
        assert path.exists(), f"broken link {link}"
        if anchor and path.suffix == ".md":
            assert anchor in _anchors(path.read_text()), f"no heading for #{anchor} in {path.name}"
