"""CascaDB's engine: a database over the ordered store, and the sessions on it.

A `Database` holds the store and the catalog; each client connection gets a
`Session`: its own SQLite connection (in memory, holding nothing but virtual
tables), its transaction (writes kept in the session until COMMIT), and the
statement loop: parse (dialect.py) → DDL and transaction control here →
everything else to SQLite, whose virtual tables (vtable.py) read the store and
call back here to write. Statements run one at a time per database (a lock),
so a statement sees a stable store; a failed statement takes back its own
writes and, inside a transaction block, fails the block as PostgreSQL does.
"""

from __future__ import annotations

import itertools
import operator
import secrets
import threading
from dataclasses import dataclass, field

import apsw
from sqlglot import exp

from securecloud.services.sql import dialect
from securecloud.services.sql.catalog import (
    PRIMARY,
    ROWID,
    SEQUENCE_KEY,
    Table,
    catalog_key,
    catalog_range,
    index_from_ddl,
    table_from_ddl,
)
from securecloud.services.sql.errors import (
    DuplicateTable,
    InFailedTransaction,
    NotNullViolation,
    SerializationFailure,
    SqlError,
    SyntaxProblem,
    TransactionState,
    UndefinedColumn,
    UndefinedTable,
    UniqueViolation,
    Unsupported,
)
from securecloud.services.sql.keys import (
    decode_id,
    encode_id,
    encode_values,
    index_prefix,
    prefix_end,
)
from securecloud.services.sql.rows import RowCodec, coerce
from securecloud.services.sql.storage import Store, WriteConflict
from securecloud.services.sql.vtable import Module
from securecloud.services.sql.writes import Writes


@dataclass
class Result:
    columns: list[str] = field(default_factory=list)
    rows: list[tuple] = field(default_factory=list)
    tag: str = ""  # PostgreSQL command tag: SELECT 3, INSERT 0 2, ...


_INSERTED_ONE = Result(tag="INSERT 0 1")


class Database:
    def __init__(self, store: Store):
        self.store = store
        self.lock = threading.RLock()
        self.tables: dict[str, Table] = {}
        self.version = 0  # bumped on every catalog change
        self._codecs: dict[str, RowCodec] = {}
        self.reload_catalog()

    def reload_catalog(self) -> None:
        low, high = catalog_range()
        self.tables = {
            t.name: t for t in (Table.from_json(v) for _, v in self.store.scan(low, high))
        }
        self._codecs = {}
        self.not_null = frozenset(
            c.name for t in self.tables.values() for c in t.columns if c.not_null
        )
        self.version += 1

    def codec(self, name: str) -> RowCodec:
        codec = self._codecs.get(name)
        if codec is None:
            codec = self._codecs[name] = RowCodec(self.tables[name])
        return codec

    def session(self) -> Session:
        return Session(self)

    def checkpoint(self) -> int:
        with self.lock:
            return self.store.checkpoint()


_ABSENT = object()


class Transaction:
    def __init__(self, started: int, explicit: bool):
        self.started = started
        self.explicit = explicit
        self.writes = Writes()  # key -> value, None: deleted
        self.catalog_changed = False
        self.failed = False
        self._undo: dict[bytes, object] = {}  # what the current statement overwrote

    def put(self, key: bytes, value: bytes | None) -> None:
        if key not in self._undo:
            self._undo[key] = self.writes.get(key, _ABSENT)
        self.writes[key] = value

    def begin_statement(self) -> None:
        self._undo = {}

    def undo_statement(self) -> None:
        """Take back the current statement's writes (and only those)."""
        for key, previous in self._undo.items():
            if previous is _ABSENT:
                del self.writes[key]
            else:
                self.writes[key] = previous
        self._undo = {}


class Session:
    def __init__(self, database: Database):
        self.database = database
        self.connection = apsw.Connection(":memory:")
        self.connection.create_module("cascadb", Module(self), use_bestindex_object=True)
        self.synced: set[str] = set()  # tables that have a virtual table here
        self.synced_version = -1
        self.transaction: Transaction | None = None
        self._handles: dict[int, bytes] = {}
        self._handle_ids: dict[bytes, int] = {}
        self._counter = itertools.count(1)
        self.rows_read = 0  # rows the virtual tables returned to SQLite (shows push-down)
        self._direct = False  # inserting without SQLite (_insert_plain)

    # -- the statement loop -----------------------------------------------------------
    def execute(self, sql: str, params=None, dialect_name: str = "postgres") -> list[Result]:
        statements = dialect.parse(sql, dialect_name)
        if not statements:
            return [Result(tag="EMPTY")]
        results = []
        for statement in statements:
            results.append(self.run(statement, params, dialect_name))
        return results

    def run(self, statement: exp.Expression, params=None, dialect_name="postgres") -> Result:
        with self.database.lock:
            plain = dialect.plain_insert(statement)  # a bulk INSERT's row: no other test
            control = None if plain is not None else self._control(statement)
            if control is not None:
                return control
            txn = self.transaction
            if txn is not None and txn.failed:
                raise InFailedTransaction(
                    "current transaction is aborted, commands ignored until end of "
                    "transaction block"
                )
            implicit = txn is None
            if implicit:
                txn = self.transaction = Transaction(self.database.store.seq, False)
            txn.begin_statement()
            try:
                result = self._statement(statement, params, dialect_name, plain)
                if implicit:
                    self._commit()
                elif txn.catalog_changed:  # DDL in a block commits on its own
                    self._commit()
                    self.transaction = Transaction(self.database.store.seq, True)
                return result
            except BaseException as exc:
                if implicit:
                    self.transaction = None
                else:
                    txn.undo_statement()
                    txn.failed = True
                self._forget_handles()
                if isinstance(exc, apsw.Error):
                    raise _from_sqlite(exc) from None
                raise

    def insert_many(
        self, statement: exp.Expression, rows: list[list]
    ) -> tuple[int, Exception | None]:
        """`statement` (a plain INSERT) run once per parameter list of `rows` inside an open
        transaction block, as `run` runs each: (rows inserted, the error that stopped
        the next one or None). An error takes back that row's own writes and fails the
        block, as in `run`. Inserts nothing (0, None) unless the statement is a plain
        INSERT and a block is open and not failed: autocommit rows each commit, and go
        one by one through `run`. Stops early, without error, at a row `run` would hand
        to SQLite."""
        plain = dialect.plain_insert(statement)
        with self.database.lock:
            txn = self.transaction
            if plain is None or txn is None or not txn.explicit or txn.failed:
                return 0, None
            planned = self._plain_plan(plain)
            if planned is None:
                return 0, None
            table, codec, (pick, count, constants) = planned
            done = 0
            self._direct = True
            try:
                for params in rows:
                    if len(params) < count:
                        return done, None
                    txn.begin_statement()
                    fields = list(pick((None, *params[:count], *constants)))
                    self._insert_fields(table, codec, fields)
                    done += 1
            except BaseException as exc:
                txn.undo_statement()
                txn.failed = True
                self._forget_handles()
                if not isinstance(exc, Exception):
                    raise
                return done, _from_sqlite(exc) if isinstance(exc, apsw.Error) else exc
            finally:
                self._direct = False
            return done, None

    def _control(self, statement: exp.Expression) -> Result | None:
        text = statement.sql().upper() if isinstance(statement, exp.Command | exp.Alias) else ""
        if isinstance(statement, exp.Transaction) or text.startswith("START"):
            if self.transaction is not None:
                return Result(tag="BEGIN")  # PostgreSQL warns and carries on
            self.transaction = Transaction(self.database.store.seq, True)
            return Result(tag="BEGIN")
        if isinstance(statement, exp.Commit):
            txn = self.transaction
            if txn is None:
                return Result(tag="COMMIT")
            if txn.failed:
                self.transaction = None
                return Result(tag="ROLLBACK")
            self._commit()
            return Result(tag="COMMIT")
        if isinstance(statement, exp.Rollback):
            if self.transaction is not None and self.transaction.catalog_changed:
                self.database.reload_catalog()
            self.transaction = None
            self._forget_handles()
            return Result(tag="ROLLBACK")
        if isinstance(statement, exp.Set):
            return Result(tag="SET")
        return None

    def _commit(self) -> None:
        txn = self.transaction
        self.transaction = None
        self._forget_handles()
        try:
            self.database.store.commit(txn.writes, txn.started)
        except WriteConflict as exc:
            if txn.catalog_changed:
                self.database.reload_catalog()
            raise SerializationFailure(str(exc)) from None
        if txn.catalog_changed:
            self.database.reload_catalog()

    def _statement(
        self, statement: exp.Expression, params, dialect_name: str, plain=None
    ) -> Result:
        if plain is not None and (params is None or isinstance(params, list | tuple)):
            inserted = self._insert_plain(plain, params or ())
            if inserted is not None:
                return inserted
        if isinstance(statement, exp.Create):
            return self._create(statement)
        if isinstance(statement, exp.Drop):
            return self._drop(statement)
        if isinstance(statement, exp.Command):
            raise Unsupported(f"{statement.sql()[:60]}: not supported")
        if not isinstance(statement, exp.Query | exp.Insert | exp.Update | exp.Delete | exp.Values):
            raise Unsupported(f"{type(statement).__name__.upper()} statements are not supported")
        self._sync()
        sql = dialect.to_sqlite(statement, dialect_name, self.database.not_null)
        cursor = self.connection.cursor()
        try:
            cursor.execute(sql, _bindings(params))
        except KeyError as exc:  # a :pN the parameters do not give
            name = str(exc.args[0]) if exc.args else ""
            raise SqlError(f"there is no parameter ${name.removeprefix('p')}", "42P02") from None
        try:
            description = cursor.getdescription()
        except apsw.ExecutionCompleteError:
            description = ()
        rows = cursor.fetchall() if description else []
        changes = self.connection.changes()
        if isinstance(statement, exp.Insert):
            return Result(tag=f"INSERT 0 {changes}")
        if isinstance(statement, exp.Update):
            return Result(tag=f"UPDATE {changes}")
        if isinstance(statement, exp.Delete):
            return Result(tag=f"DELETE {changes}")
        return Result([d[0] for d in description], rows, f"SELECT {len(rows)}")

    # -- DDL --------------------------------------------------------------------------
    def _ddl_allowed(self) -> Transaction:
        """DDL commits on its own (as in MySQL): allowed in a block that wrote nothing yet."""
        txn = self.transaction
        if txn.explicit and txn.writes and not txn.catalog_changed:
            raise TransactionState(
                "DDL after writes in a transaction block is not supported: COMMIT first"
            )
        txn.catalog_changed = True
        return txn

    def _create(self, statement: exp.Create) -> Result:
        kind = str(statement.args.get("kind", "")).upper()
        exists_ok = bool(statement.args.get("exists"))
        if kind == "TABLE":
            name = statement.this.this.name.lower()
            if name in self.database.tables:
                if exists_ok:
                    return Result(tag="CREATE TABLE")
                raise DuplicateTable(f'relation "{name}" already exists')
            txn = self._ddl_allowed()
            table_id = self._next_table_id(txn)
            table = table_from_ddl(statement, table_id)
            txn.put(catalog_key(table.name), table.to_json())
            return Result(tag="CREATE TABLE")
        if kind == "INDEX":
            target = statement.this.args["table"].name.lower()
            table = self._table(target)
            index = index_from_ddl(statement, table)
            if any(i.name == index.name for t in self.database.tables.values() for i in t.indexes):
                if exists_ok:
                    return Result(tag="CREATE INDEX")
                raise DuplicateTable(f'relation "{index.name}" already exists')
            txn = self._ddl_allowed()
            grown = Table(
                table.name, table.id, table.columns, table.primary_key, (*table.indexes, index)
            )
            self._backfill(grown, index)
            txn.put(catalog_key(table.name), grown.to_json())
            return Result(tag="CREATE INDEX")
        raise Unsupported(f"CREATE {kind} is not supported")

    def _drop(self, statement: exp.Drop) -> Result:
        kind = str(statement.args.get("kind", "")).upper()
        names = [t.name.lower() for t in statement.args.get("tables") or [statement.this]]
        exists_ok = bool(statement.args.get("exists"))
        if kind == "TABLE":
            for name in names:
                if name not in self.database.tables:
                    if exists_ok:
                        continue
                    raise UndefinedTable(f'table "{name}" does not exist')
                txn = self._ddl_allowed()
                table = self.database.tables[name]
                start = encode_id(table.id)
                for key, _ in self.database.store.scan(
                    start, prefix_end(start), overlay=txn.writes
                ):
                    txn.put(key, None)
                txn.put(catalog_key(name), None)
            return Result(tag="DROP TABLE")
        if kind == "INDEX":
            for name in names:
                owner = next(
                    (
                        t
                        for t in self.database.tables.values()
                        if any(i.name == name for i in t.indexes)
                    ),
                    None,
                )
                if owner is None:
                    if exists_ok:
                        continue
                    raise UndefinedTable(f'index "{name}" does not exist')
                txn = self._ddl_allowed()
                index = next(i for i in owner.indexes if i.name == name)
                start = index_prefix(owner.id, index.id)
                for key, _ in self.database.store.scan(
                    start, prefix_end(start), overlay=txn.writes
                ):
                    txn.put(key, None)
                kept = tuple(i for i in owner.indexes if i.name != name)
                shrunk = Table(owner.name, owner.id, owner.columns, owner.primary_key, kept)
                txn.put(catalog_key(owner.name), shrunk.to_json())
            return Result(tag="DROP INDEX")
        raise Unsupported(f"DROP {kind} is not supported")

    def _next_table_id(self, txn: Transaction) -> int:
        raw = self.get(SEQUENCE_KEY)
        table_id = decode_id(raw)[0] if raw else 1
        txn.put(SEQUENCE_KEY, encode_id(table_id + 1))
        return table_id

    def _backfill(self, table: Table, index) -> None:
        codec = RowCodec(table)
        start = index_prefix(table.id, PRIMARY)
        seen: dict[bytes, bytes] = {}
        for key, value in self.scan(start, prefix_end(start)):
            row = codec.row(key, value)
            entry = self._index_key(table, index, row)
            if index.unique and entry[1] is not None:
                if entry[1] in seen:
                    raise UniqueViolation(
                        f'could not create unique index "{index.name}": duplicate values'
                    )
                seen[entry[1]] = key
            self.transaction.put(entry[0], b"")

    def _sync(self) -> None:
        """Give this connection a virtual table per table of the catalog."""
        database = self.database
        if self.synced_version == database.version:
            return
        for name in self.synced:
            self.connection.execute(f'DROP TABLE IF EXISTS temp."{name}"')
        self.synced = set()
        for name in database.tables:
            self.connection.execute(f'CREATE VIRTUAL TABLE temp."{name}" USING cascadb()')
            self.synced.add(name)
        self.synced_version = database.version

    # -- reads and writes for the virtual tables --------------------------------------
    def _table(self, name: str) -> Table:
        table = self.database.tables.get(name)
        if table is None:
            raise UndefinedTable(f'relation "{name}" does not exist')
        return table

    def scan(self, low: bytes, high: bytes | None, reverse: bool = False):
        return itertools.chain.from_iterable(self.scan_chunks(low, high, reverse))

    def scan_chunks(self, low: bytes, high: bytes | None, reverse: bool = False, first: int = 16):
        """The store's entries in [low, high) as lists, this transaction's writes over them."""
        txn = self.transaction
        overlay = txn.writes if txn is not None and txn.writes else None
        return self.database.store.scan_chunks(low, high, reverse, overlay, first)

    def first(self, low: bytes, high: bytes | None, reverse: bool = False):
        """The first entry scan_chunks would give, by a seek (Store.first)."""
        txn = self.transaction
        overlay = txn.writes if txn is not None and txn.writes else None
        return self.database.store.first(low, high, reverse, overlay)

    def get(self, key: bytes) -> bytes | None:
        txn = self.transaction
        if txn is not None and key in txn.writes:
            return txn.writes[key]
        return self.database.store.get(key)

    def handle(self, key: bytes) -> int:
        handle = self._handle_ids.get(key)
        if handle is None:
            handle = next(self._counter)
            self._handle_ids[key] = handle
            self._handles[handle] = key
        return handle

    def _forget_handles(self) -> None:
        self._handles.clear()
        self._handle_ids.clear()

    def _coerce(self, table: Table, codec: RowCodec, fields: list) -> list:
        if tuple(map(type, fields)) == codec.exact:
            return list(fields)  # every value of its column's type: nothing to do
        row = [coerce(v, c.affinity, c.name) for v, c in zip(fields, table.columns, strict=True)]
        for i, column in enumerate(table.columns):
            if row[i] is None:
                if column.name == ROWID:
                    row[i] = secrets.randbits(63)
                elif column.serial:
                    row[i] = self._next_serial(table, i)
                elif column.not_null:
                    raise NotNullViolation(
                        f'null value in column "{column.name}" of relation "{table.name}" '
                        "violates not-null constraint"
                    )
        return row

    def _next_serial(self, table: Table, position: int) -> int:
        if table.primary_key != (table.columns[position].name,):
            raise Unsupported("serial columns are supported as the whole primary key only")
        start = index_prefix(table.id, PRIMARY)
        for key, value in self.scan(start, prefix_end(start), reverse=True):
            return self.database.codec(table.name).row(key, value)[position] + 1
        return 1

    def _index_key(self, table: Table, index, row: list) -> tuple[bytes, bytes | None]:
        """(the entry's key, its unique prefix or None when a NULL exempts it)."""
        indexed = [row[table.position(c)] for c in index.columns]
        prefix = index_prefix(table.id, index.id) + encode_values(indexed, index.descending)
        pk = [row[table.position(c)] for c in table.primary_key]
        unique = prefix if index.unique and all(v is not None for v in indexed) else None
        return prefix + encode_values(pk), unique

    def _check_unique(self, table: Table, index, unique: bytes, own: bytes) -> bool:
        return all(key == own for key, _ in self.scan(unique, prefix_end(unique)))

    def _plain_plan(self, plain: dialect.PlainInsert):
        """(table, codec, row plan) for a plain INSERT, or None when SQLite must run it."""
        table = self.database.tables.get(plain.table)
        if table is None:
            return None
        codec = self.database.codec(plain.table)
        if plain.codec is not codec:  # first use, or the table changed since
            plain.plan, plain.codec = _fields_plan(table, plain.columns, plain.values), codec
        return None if plain.plan is None else (table, codec, plain.plan)

    def _insert_plain(self, plain: dialect.PlainInsert, params) -> Result | None:
        """A one-row INSERT of parameters and constants, straight into the table (the
        same checks as through SQLite: insert_row). None: let SQLite run it (and
        report whatever is wrong with it)."""
        planned = self._plain_plan(plain)
        if planned is None:
            return None
        table, codec, (pick, count, constants) = planned
        if len(params) < count:
            return None
        self._direct = True
        try:
            self._insert_fields(table, codec, list(pick((None, *params[:count], *constants))))
        finally:
            self._direct = False
        return _INSERTED_ONE

    def _on_conflict(self) -> int:
        """The statement's conflict mode: SQLite's, or ABORT for a direct insert."""
        return apsw.SQLITE_ABORT if self._direct else self.connection.vtab_on_conflict()

    def insert_row(self, name: str, fields: list) -> int:
        return self._insert_fields(self._table(name), self.database.codec(name), fields)

    def _insert_fields(self, table: Table, codec: RowCodec, fields: list) -> int:
        row = self._coerce(table, codec, fields)
        key = codec.primary_key(row)
        txn = self.transaction
        old = self.get(key)
        if old is not None:
            mode = self._on_conflict()
            if mode == apsw.SQLITE_IGNORE:
                return self.handle(key)
            if mode != apsw.SQLITE_REPLACE:
                raise UniqueViolation(
                    f'duplicate key value violates unique constraint "{table.name}_pkey"'
                )
            self._unindex(table, key, old)
        value = codec.encode(row)
        for index in table.indexes:
            entry, unique = self._index_key(table, index, row)
            if unique is not None and not self._check_unique(table, index, unique, entry):
                mode = self._on_conflict()
                if mode == apsw.SQLITE_IGNORE:
                    return self.handle(key)
                raise UniqueViolation(
                    f'duplicate key value violates unique constraint "{index.name}"'
                )
            txn.put(entry, b"")
        txn.put(key, value)
        return 0 if self._direct else self.handle(key)  # no SQLite cursor asks for its rowid

    def _unindex(self, table: Table, key: bytes, value: bytes) -> None:
        if not table.indexes:
            return
        row = self.database.codec(table.name).row(key, value)
        for index in table.indexes:
            self.transaction.put(self._index_key(table, index, row)[0], None)

    def delete_row(self, name: str, handle: int) -> None:
        table = self._table(name)
        key = self._handles[handle]
        old = self.get(key)
        if old is None:
            return
        self._unindex(table, key, old)
        self.transaction.put(key, None)

    def update_row(self, name: str, handle: int, fields: list) -> None:
        table = self._table(name)
        key = self._handles[handle]
        old = self.get(key)
        if old is None:
            return
        codec = self.database.codec(name)
        row = self._coerce(table, codec, fields)
        new_key = codec.primary_key(row)
        if new_key != key and self.get(new_key) is not None:
            raise UniqueViolation(
                f'duplicate key value violates unique constraint "{table.name}_pkey"'
            )
        self._unindex(table, key, old)
        txn = self.transaction
        if new_key != key:
            txn.put(key, None)
            self._handles[handle] = new_key
        for index in table.indexes:
            entry, unique = self._index_key(table, index, row)
            if unique is not None and not self._check_unique(table, index, unique, entry):
                raise UniqueViolation(
                    f'duplicate key value violates unique constraint "{index.name}"'
                )
            txn.put(entry, b"")
        txn.put(new_key, codec.encode(row))

    def close(self) -> None:
        self.transaction = None
        self.connection.close()


def _fields_plan(table: Table, columns, values):
    """How a plain INSERT's row is built from (None, *params, *constants) by one
    itemgetter: (getter, parameters used, constants); None when a column is unknown or
    the values do not match the columns."""
    if columns is None:
        columns = [c.name for c in table.columns if c.name != ROWID]
        if len(columns) != len(values):
            return None
    count = max((v for kind, v in values if kind == "param"), default=0)
    constants = tuple(v for kind, v in values if kind != "param")
    source = [0] * len(table.columns)  # 0: NULL
    next_constant = 1 + count
    for column, (kind, value) in zip(columns, values, strict=True):
        position = table.positions.get(column)
        if position is None or (kind == "param" and value < 1):
            return None
        if kind == "param":
            source[position] = value
        else:
            source[position] = next_constant
            next_constant += 1
    if len(source) == 1:
        only = source[0]
        return (lambda row: (row[only],)), count, constants
    return operator.itemgetter(*source), count, constants


def _bindings(params):
    if params is None:
        return None
    if isinstance(params, dict):
        return params
    return {f"p{i}": v for i, v in enumerate(params, start=1)}


def _from_sqlite(error: apsw.Error) -> SqlError:
    """SQLite's errors as SQL errors with a SQLSTATE; ours come back out unchanged."""
    cause = error.__cause__ or error.__context__
    if isinstance(cause, SqlError):
        return cause
    message = str(error).removeprefix("SQLError: ")
    if isinstance(error, apsw.SQLError):
        named = message.rsplit(":", 1)[-1].strip()
        if "no such table" in message:
            return UndefinedTable(f'relation "{named}" does not exist')
        if "no such column" in message:
            return UndefinedColumn(f'column "{named}" does not exist')
        if " has no column named " in message:
            table, column = message.split(" has no column named ", 1)
            return UndefinedColumn(
                f'column "{column.strip()}" of relation "{table.split()[-1]}" does not exist'
            )
        if "syntax error" in message or "incomplete input" in message:
            return SyntaxProblem(message)
        return SqlError(message, "42000")
    if isinstance(error, apsw.ConstraintError):
        return UniqueViolation(message)
    if isinstance(error, apsw.MismatchError | apsw.RangeError):
        return SqlError(message, "22023")
    return SqlError(message)
