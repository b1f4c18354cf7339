"""The journal is the boundary (issue 19): only spoolup/journal/ knows the schema.  No other
module of spoolup holds an SQL statement, touches the journal's connection (`.conn`,
`._conn`) or opens one of its own (`sqlite3.connect`); they use the journal's verbs."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "spoolup"
JOURNAL = PACKAGE / "journal"

# statements, not words: prose that says "select" or "update" is not SQL
SQL = re.compile(
    r"\bSELECT\b[\s\S]*\bFROM\b|\bINSERT\s+(?:OR\s+\w+\s+)?INTO\b|\bUPDATE\s+\w+\s+SET\b|\bDELETE\s+FROM\b"
    r"|\bCREATE\s+(?:UNIQUE\s+)?(?:TABLE|INDEX|VIEW|TRIGGER)\b|\bPRAGMA\s+\w+"
)
CONNECTION_ATTRIBUTES = {"conn", "_conn"}


def _text(node: ast.AST) -> str | None:
    """A string literal's text; an f-string's with each placeholder as {}."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
    return None


def violations(source: str, name: str = "<source>") -> list[str]:
    """What in this module's source crosses the boundary: SQL in a string literal, the journal's
    connection, or a connection opened with sqlite3.connect."""
    out = []
    tree = ast.parse(source, name)
    inside_fstring = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
    for node in ast.walk(tree):
        text = None if id(node) in inside_fstring else _text(node)
        if text is not None and SQL.search(text):
            out.append(f"{name}:{node.lineno}: SQL {text.strip()[:60]!r}")
        elif isinstance(node, ast.Attribute) and node.attr in CONNECTION_ATTRIBUTES:
            out.append(f"{name}:{node.lineno}: .{node.attr}")
        elif (isinstance(node, ast.Attribute) and node.attr == "connect" and isinstance(node.value, ast.Name)
              and node.value.id == "sqlite3"):
            out.append(f"{name}:{node.lineno}: sqlite3.connect")
    return out


def _modules(inside_journal: bool) -> dict[Path, str]:
    return {p: p.read_text() for p in sorted(PACKAGE.rglob("*.py"))
            if (JOURNAL in p.parents) == inside_journal}


def test_no_sql_or_connection_outside_the_journal_package():
    found = [v for path, source in _modules(inside_journal=False).items()
             for v in violations(source, str(path.relative_to(PACKAGE.parent)))]
    assert found == [], "use (or add) a verb of spoolup/journal/ instead:\n" + "\n".join(found)


def test_the_check_sees_the_journals_own_sql():
    """Not vacuous: the same check finds the statements and the connection where they belong."""
    modules = _modules(inside_journal=True)
    assert {p.name for p in modules} >= {"__init__.py", "store.py", "rows.py", "sources.py", "objects.py", "read.py"}
    found = [v for path, source in modules.items() for v in violations(source, path.name)]
    for what in ("SQL 'SELECT", "SQL 'INSERT", "SQL 'UPDATE", "SQL 'DELETE", "SQL 'PRAGMA", "._conn",
                 "sqlite3.connect"):
        assert any(what in v for v in found), f"no {what} found in spoolup/journal/"


def test_the_check_flags_each_kind_of_leak():
    leaks = {
        'rows = journal.conn.execute("SELECT id FROM objects WHERE state = ?", (s,))': 2,  # .conn and the SQL
        'journal._conn.commit()': 1,
        'n = f"DELETE FROM chunks WHERE object_id = {oid}"': 1,
        'q = ("UPDATE objects SET state = \'done\' "\n     "WHERE id = ?")': 1,  # implicit concatenation
        'sql = "INSERT OR IGNORE INTO source_objects VALUES (?, ?)"': 1,
        'v = peek(path, "PRAGMA user_version")': 1,
        'import sqlite3\nc = sqlite3.connect(path)': 1,
        'WHERE = "NOT EXISTS (SELECT 1 FROM objects p WHERE p.id < o.id)"': 1,  # a fragment of a statement
    }
    for source, n in leaks.items():
        assert len(violations(source)) == n, (source, violations(source))
    clean = ('log.info("select the next object to upload, then update its state")\n'
             '"""Deletes from the spool: the reaper."""\n'
             'journal.pending_objects()\nself.connection = None\n')
    assert violations(clean) == []
