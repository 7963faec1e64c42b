"""The data dictionary: tables, columns, indexes; kept in the KVS like any row.

Definitions live in the ordered key space under table id 0 (index 1: one
entry per table, keyed by name, valued by its JSON). So DDL commits, replays
and conflicts like data. `table_from_ddl`/`index_from_ddl` turn a parsed
CREATE statement (sqlglot) into a definition and name what they refuse.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, field

from sqlglot import exp

from securecloud.services.sql.errors import DuplicateTable, SyntaxProblem, Unsupported
from securecloud.services.sql.keys import encode_value, index_prefix

CATALOG_TABLE = 0
PRIMARY = 1
ROWID = "_rowid"  # hidden key of a table declared without a primary key

_AFFINITY = {
    "integer": (
        "INT",
        "BIGINT",
        "SMALLINT",
        "TINYINT",
        "MEDIUMINT",
        "SERIAL",
        "BIGSERIAL",
        "SMALLSERIAL",
        "BOOLEAN",
        "BIT",
        "UBIGINT",
        "UINT",
        "USMALLINT",
        "UTINYINT",
    ),
    "real": ("FLOAT", "DOUBLE", "REAL", "DECIMAL", "NUMERIC", "MONEY", "SMALLMONEY"),
    "text": (
        "VARCHAR",
        "CHAR",
        "TEXT",
        "NVARCHAR",
        "NCHAR",
        "NAME",
        "UUID",
        "JSON",
        "JSONB",
        "TIMESTAMP",
        "TIMESTAMPTZ",
        "DATE",
        "TIME",
        "DATETIME",
        "INTERVAL",
        "MEDIUMTEXT",
        "LONGTEXT",
        "TINYTEXT",
        "ENUM",
    ),
    "blob": ("VARBINARY", "BINARY", "BLOB", "BYTEA", "LONGBLOB", "MEDIUMBLOB", "TINYBLOB"),
}


_PG_NAMES = {"int": "integer", "double": "double precision", "bool": "boolean"}


def affinity_of(type_name: str) -> str:
    upper = type_name.upper()
    for affinity, names in _AFFINITY.items():
        if upper in names:
            return affinity
    raise Unsupported(
        f"column type {type_name}: not supported (integer, real, text, blob kinds are)"
    )


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # as declared, for \d
    affinity: str  # integer | real | text | blob
    not_null: bool = False
    serial: bool = False


@dataclass(frozen=True)
class Index:
    name: str
    id: int
    columns: tuple[str, ...]
    descending: tuple[bool, ...]
    unique: bool = False


@dataclass(frozen=True)
class Table:
    name: str
    id: int
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    indexes: tuple[Index, ...] = field(default=())

    @property
    def hidden_key(self) -> bool:
        return self.primary_key == (ROWID,)

    def column(self, name: str) -> Column:
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(name)

    @functools.cached_property
    def positions(self) -> dict[str, int]:
        """Column name -> position (tables are immutable: a change is a new Table)."""
        return {column.name: i for i, column in enumerate(self.columns)}

    def position(self, name: str) -> int:
        return self.positions[name]

    @property
    def next_index_id(self) -> int:
        return max([PRIMARY, *(i.id for i in self.indexes)]) + 1

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Table:
        doc = json.loads(data)
        return cls(
            name=doc["name"],
            id=doc["id"],
            columns=tuple(Column(**c) for c in doc["columns"]),
            primary_key=tuple(doc["primary_key"]),
            indexes=tuple(
                Index(
                    name=i["name"],
                    id=i["id"],
                    columns=tuple(i["columns"]),
                    descending=tuple(i["descending"]),
                    unique=i["unique"],
                )
                for i in doc["indexes"]
            ),
        )


def catalog_key(name: str) -> bytes:
    return index_prefix(CATALOG_TABLE, PRIMARY) + encode_value(name)


def catalog_range() -> tuple[bytes, bytes]:
    return index_prefix(CATALOG_TABLE, PRIMARY), index_prefix(CATALOG_TABLE, PRIMARY + 1)


SEQUENCE_KEY = index_prefix(CATALOG_TABLE, PRIMARY + 1)  # value: next table id


def _name(identifier) -> str:
    return identifier.name if hasattr(identifier, "name") else str(identifier)


def table_from_ddl(create: exp.Create, table_id: int) -> Table:
    schema = create.this
    if not isinstance(schema, exp.Schema):
        raise Unsupported("CREATE TABLE ... AS SELECT is not supported; create, then INSERT")
    name = schema.this.name.lower()
    columns: list[Column] = []
    primary: list[str] = []
    uniques: list[tuple[str, ...]] = []
    for item in schema.expressions:
        if isinstance(item, exp.ColumnDef):
            column_name = item.name.lower()
            if column_name == ROWID:
                raise SyntaxProblem(f"column name {ROWID} is reserved")
            if item.args.get("kind") is None:
                raise SyntaxProblem(f"column {column_name}: a type is required")
            kind = item.args["kind"]
            type_name = kind.this.name if hasattr(kind.this, "name") else str(kind.this)
            not_null = False
            for constraint in item.args.get("constraints") or []:
                found = constraint.args.get("kind")
                if isinstance(found, exp.PrimaryKeyColumnConstraint):
                    primary.append(column_name)
                    not_null = True
                elif isinstance(found, exp.NotNullColumnConstraint) and not found.args.get(
                    "allow_null"
                ):
                    not_null = True
                elif isinstance(found, exp.UniqueColumnConstraint):
                    uniques.append((column_name,))
            columns.append(
                Column(
                    column_name,
                    _PG_NAMES.get(kind.sql("postgres").lower(), kind.sql("postgres").lower()),
                    affinity_of(type_name),
                    not_null,
                    serial=type_name.upper().endswith("SERIAL"),
                )
            )
        elif isinstance(item, exp.PrimaryKey):
            if primary:
                raise SyntaxProblem(f"table {name}: more than one primary key")
            primary = [_name(e).lower() for e in item.expressions]
        elif isinstance(item, exp.UniqueColumnConstraint):
            uniques.append(tuple(_name(e).lower() for e in item.this.expressions))
        else:
            raise Unsupported(f"table {name}: {item.sql()} is not supported")
    known = {c.name for c in columns}
    if len(known) != len(columns):
        raise DuplicateTable(f"table {name}: a column is named twice", sqlstate="42701")
    for column_name in [*primary, *(c for u in uniques for c in u)]:
        if column_name not in known:
            raise SyntaxProblem(f'column "{column_name}" named in a key does not exist', "42703")
    if primary:
        columns = [
            Column(c.name, c.type, c.affinity, True, c.serial) if c.name in primary else c
            for c in columns
        ]
    else:
        columns.append(Column(ROWID, "bigint", "integer", True))
        primary = [ROWID]
    indexes = tuple(
        Index(f"{name}_{'_'.join(u)}_key", PRIMARY + 1 + i, u, (False,) * len(u), unique=True)
        for i, u in enumerate(uniques)
    )
    return Table(name, table_id, tuple(columns), tuple(primary), indexes)


def index_from_ddl(create: exp.Create, table: Table) -> Index:
    index = create.this
    params = index.args.get("params")
    columns, descending = [], []
    for ordered in params.args.get("columns") or []:
        target = ordered.this if isinstance(ordered, exp.Ordered) else ordered
        if not isinstance(target, exp.Column):
            raise Unsupported("indexes on expressions are not supported; name columns")
        column_name = target.name.lower()
        try:
            table.column(column_name)
        except KeyError:
            raise SyntaxProblem(f'column "{column_name}" does not exist', "42703") from None
        columns.append(column_name)
        descending.append(bool(isinstance(ordered, exp.Ordered) and ordered.args.get("desc")))
    if not columns:
        raise SyntaxProblem("CREATE INDEX: name at least one column")
    name = index.name.lower() if index.this else f"{table.name}_{'_'.join(columns)}_idx"
    return Index(
        name,
        table.next_index_id,
        tuple(columns),
        tuple(descending),
        bool(create.args.get("unique")),
    )
