"""Statements in the PostgreSQL or MySQL dialect, turned into SQLite's (sqlglot).

Each distinct statement text is translated once (cached): split into
statements, parameters `$n` renamed `:pn` (SQLite's named form, so a number
can repeat), PostgreSQL upserts mapped onto what SQLite virtual tables allow
(`ON CONFLICT DO NOTHING` → `INSERT OR IGNORE`; `DO UPDATE SET c = EXCLUDED.c`
for every other column → `INSERT OR REPLACE`).
"""

from __future__ import annotations

import functools
import logging
import re

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from securecloud.services.sql.errors import SyntaxProblem, Unsupported

DIALECTS = ("postgres", "mysql", "sqlite")
logging.getLogger("sqlglot").setLevel(logging.ERROR)  # its fallback notices are ours to report
_PLACEHOLDER = re.compile(r"""('(?:[^']|'')*'|"(?:[^"]|"")*"|--[^\n]*|\$(\d+))""")


def _rename_placeholders(sql: str) -> str:
    return _PLACEHOLDER.sub(lambda m: f":p{m.group(2)}" if m.group(2) else m.group(1), sql)


@functools.lru_cache(maxsize=4096)
def parse(sql: str, dialect: str = "postgres") -> tuple[exp.Expression, ...]:
    if dialect not in DIALECTS:
        raise Unsupported(f"dialect {dialect}: one of {', '.join(DIALECTS)}")
    text = _rename_placeholders(sql) if dialect == "postgres" else sql
    try:
        statements = sqlglot.parse(text, read=dialect)
    except (ParseError, TokenError) as exc:
        raise SyntaxProblem(f"syntax error: {str(exc).splitlines()[0]}") from None
    return tuple(s for s in statements if s is not None)


def _upsert(insert: exp.Insert) -> exp.Insert:
    conflict = insert.args.get("conflict")
    if conflict is None:
        return insert
    insert = insert.copy()
    insert.set("conflict", None)
    action = conflict.args.get("action")
    if conflict.args.get("duplicate"):  # MySQL ON DUPLICATE KEY UPDATE
        action = "UPDATE"
    words = str(action.this if isinstance(action, exp.Expression) else action or "").upper()
    if "NOTHING" in words:
        insert.set("alternative", "IGNORE")
        return insert
    for assignment in conflict.args.get("expressions") or []:
        target, source = assignment.this, assignment.expression
        if isinstance(source, exp.Column) and source.table.lower() == "excluded":
            named = source.name
        elif isinstance(source, exp.Anonymous) and source.name.upper() == "VALUES":
            named = source.expressions[0].name if source.expressions else ""
        else:
            named = None
        if named is None or named.lower() != target.name.lower():
            raise Unsupported(
                "upsert: only SET column = EXCLUDED.column is supported (the row is replaced)"
            )
    insert.set("alternative", "REPLACE")
    return insert


def _name_columns(select: exp.Select) -> exp.Select:
    """Result columns named as PostgreSQL names them: `avg`, `count`, `?column?`."""
    named = []
    for projection in select.expressions:
        if isinstance(projection, exp.Alias | exp.Column | exp.Star):
            named.append(projection)
        elif isinstance(projection, exp.Func):
            name = (
                projection.sql_name()
                if not isinstance(projection, exp.Anonymous)
                else (projection.name)
            )
            named.append(exp.alias_(projection, name.lower(), quoted=True))
        else:
            named.append(exp.alias_(projection, "?column?", quoted=True))
    select = select.copy()
    select.set("expressions", named)
    return select


def _sqlite_null_order(statement: exp.Expression, not_null: frozenset[str]) -> exp.Expression:
    """ORDER BY on a column that holds no NULL: SQLite's default NULL placement is as good
    as PostgreSQL's, and without an explicit NULLS clause SQLite can let the virtual table
    deliver the order (a key read backwards instead of a sort)."""
    ordered = [o for o in statement.find_all(exp.Ordered) if isinstance(o.this, exp.Column)]
    if not any(o.this.name.lower() in not_null for o in ordered):
        return statement
    statement = statement.copy()
    for o in statement.find_all(exp.Ordered):
        if isinstance(o.this, exp.Column) and o.this.name.lower() in not_null:
            o.set("nulls_first", not o.args.get("desc"))
    return statement


@functools.lru_cache(maxsize=4096)
def to_sqlite(
    statement: exp.Expression, dialect: str = "postgres", not_null: frozenset[str] = frozenset()
) -> str:
    statement = _sqlite_null_order(statement, not_null)
    if isinstance(statement, exp.Insert):
        statement = _upsert(statement)
    elif isinstance(statement, exp.Select):
        statement = _name_columns(statement)
    try:
        return statement.sql(dialect="sqlite")
    except Exception as exc:  # sqlglot refuses constructs it cannot express in SQLite
        raise Unsupported(f"cannot run this statement: {exc}") from None


_INSERT_EXTRAS = (
    "conflict", "returning", "where", "overwrite", "alternative", "ignore", "by_name",
    "partition", "settings", "default", "hint", "using", "exists", "stored", "source",
    "is_function",
)  # fmt: skip


class PlainInsert:
    """A one-row INSERT of parameters and constants into `table`: `columns` (None: all),
    `values` ("param", n) for $n or ("const", value). The engine keeps the row plan it
    made for it here (`plan`, with the codec it was made for), so a bulk INSERT looks
    nothing up per row."""

    __slots__ = ("codec", "columns", "plan", "table", "values")

    def __init__(self, table: str, columns: tuple[str, ...] | None, values: tuple):
        self.table, self.columns, self.values = table, columns, values
        self.plan = self.codec = None


@functools.lru_cache(maxsize=4096)
def plain_insert(statement: exp.Expression) -> PlainInsert | None:
    """A PlainInsert when `statement` is a one-row `INSERT INTO t [(columns)] VALUES
    (...)` of parameters and constants and nothing else, with unquoted names (folded to
    lower case); None otherwise. The engine inserts such rows without SQLite (a
    collector's bulk INSERTs); anything else, errors included, goes through SQLite."""
    if not isinstance(statement, exp.Insert) or any(statement.args.get(k) for k in _INSERT_EXTRAS):
        return None
    rows = statement.expression
    if not isinstance(rows, exp.Values) or len(rows.expressions) != 1:
        return None
    target, columns = statement.this, None
    if isinstance(target, exp.Schema):
        if not all(_unquoted(i) for i in target.expressions):
            return None
        columns = tuple(i.name.lower() for i in target.expressions)
        target = target.this
    if not isinstance(target, exp.Table) or target.args.get("db") or not _unquoted(target.this):
        return None
    values = []
    for item in rows.expressions[0].expressions:
        value = _constant(item)
        if value is None:
            return None
        values.append(value)
    if columns is not None and len(columns) != len(values):
        return None
    return PlainInsert(target.name.lower(), columns, tuple(values))


def _unquoted(identifier) -> bool:
    return isinstance(identifier, exp.Identifier) and not identifier.quoted


def _constant(item: exp.Expression) -> tuple | None:
    if isinstance(item, exp.Placeholder):
        name = item.name
        return ("param", int(name[1:])) if name[:1] == "p" and name[1:].isdigit() else None
    if isinstance(item, exp.Null):
        return ("const", None)
    if isinstance(item, exp.Literal):
        if item.is_string:
            return ("const", item.this)
        text = item.this
        return ("const", int(text) if text.lstrip("-").isdigit() else float(text))
    return None
