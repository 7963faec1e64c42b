"""Answers to the catalog queries of psql's \\dt and \\d TABLE, from our catalog.

CascaDB has no pg_catalog; psql (15) asks these by shape, so each is
recognised by a fragment only it contains and answered with the rows psql
reads. Table oids are 16384 + the table id. Any other query on pg_catalog
gets an empty result, which psql shows as "nothing of that kind".
"""

from __future__ import annotations

import re

from securecloud.services.sql.catalog import ROWID
from securecloud.services.sql.engine import Database, Result

OID_BASE = 16384
_NAME_PATTERN = re.compile(r"OPERATOR\(pg_catalog\.~\) '\^\((.+?)\)\$'")
_OID = re.compile(r"(?:c\.oid|a\.attrelid|i\.indrelid|c\.oid)\s*=\s*'(\d+)'")


def answer(sql: str, database: Database | None) -> Result | None:
    if "pg_catalog" not in sql:
        return None
    if database is None:
        return Result(tag="SELECT 0")
    tables = {OID_BASE + t.id: t for t in database.tables.values()}
    if "pg_get_userbyid(c.relowner)" in sql and "c.relkind IN ('r','p'" in sql:
        rows = [
            ("public", t.name, "table", "cascadb")
            for t in sorted(tables.values(), key=lambda t: t.name)
        ]
        return _result(["Schema", "Name", "Type", "Owner"], rows)
    named = _NAME_PATTERN.search(sql)
    if named and "c.relname" in sql:
        pattern = re.compile(f"^({named.group(1)})$")
        rows = [(str(oid), "public", t.name) for oid, t in tables.items() if pattern.match(t.name)]
        return _result(["oid", "nspname", "relname"], rows)
    found = _OID.search(sql)
    table = tables.get(int(found.group(1))) if found else None
    if table is not None and "c.relchecks, c.relkind" in sql:
        row = (
            0,
            "r",
            bool(table.indexes) or not table.hidden_key,
            False,
            False,
            False,
            False,
            False,
            False,
            "",
            0,
            "",
            "p",
            "d",
            "heap",
        )
        return _result([f"c{i}" for i in range(len(row))], [row])
    if table is not None and "FROM pg_catalog.pg_attribute a" in sql and "format_type" in sql:
        rows = [
            (c.name, c.type, None, c.not_null, None, "", "")
            for c in table.columns
            if c.name != ROWID
        ]
        return _result(
            [
                "attname",
                "format_type",
                "default",
                "attnotnull",
                "attcollation",
                "attidentity",
                "attgenerated",
            ],
            rows,
        )
    if table is not None and "pg_catalog.pg_index i" in sql and "indisprimary" in sql:
        rows = []
        if not table.hidden_key:
            columns = ", ".join(table.primary_key)
            rows.append(
                (
                    f"{table.name}_pkey",
                    True,
                    True,
                    False,
                    True,
                    f"CREATE UNIQUE INDEX {table.name}_pkey ON {_on(table)} ({columns})",
                    f"PRIMARY KEY ({columns})",
                    "p",
                    False,
                    False,
                    False,
                    0,
                )
            )
        for index in table.indexes:
            columns = ", ".join(
                c + (" DESC" if d else "")
                for c, d in zip(index.columns, index.descending, strict=True)
            )
            unique = "UNIQUE " if index.unique else ""
            rows.append(
                (
                    index.name,
                    False,
                    index.unique,
                    False,
                    True,
                    f"CREATE {unique}INDEX {index.name} ON {_on(table)} ({columns})",
                    None,
                    None,
                    False,
                    False,
                    False,
                    0,
                )
            )
        return _result([f"c{i}" for i in range(12)], rows)
    return Result(tag="SELECT 0")


def _on(table) -> str:
    return f"public.{table.name} USING cascadb"


def _result(columns: list[str], rows: list[tuple]) -> Result:
    return Result(columns, rows, f"SELECT {len(rows)}")
