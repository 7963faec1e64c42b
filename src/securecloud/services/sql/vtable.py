"""SQLite's planner over CascaDB tables: an APSW virtual-table module.

`best_index` tells SQLite which constraints become key ranges: equality or IN
on a leading run of an index's columns, then at most one range on the next,
on the primary index or any secondary index; ORDER BY on the index columns
that follow is consumed. Costs follow the rows a plan would read, so SQLite
prefers a point lookup to a prefix scan to a full scan. Everything else
(joins, aggregates, expressions) SQLite does on the rows we return. Writes go
to the session (engine.Session), which enforces keys and maintains indexes.
"""

from __future__ import annotations

import functools
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import apsw

from securecloud.services.sql.catalog import PRIMARY, ROWID, Table
from securecloud.services.sql.keys import (
    decode_value,
    decode_values,
    encode_values,
    index_prefix,
    ints_encoder,
    prefix_end,
)
from securecloud.services.sql.rows import EXACT_TYPE, coerce
from securecloud.services.sql.storage import CHUNK

if TYPE_CHECKING:
    from securecloud.services.sql.engine import Session

EQ, GT, LE, LT, GE = (
    apsw.SQLITE_INDEX_CONSTRAINT_EQ,
    apsw.SQLITE_INDEX_CONSTRAINT_GT,
    apsw.SQLITE_INDEX_CONSTRAINT_LE,
    apsw.SQLITE_INDEX_CONSTRAINT_LT,
    apsw.SQLITE_INDEX_CONSTRAINT_GE,
)
RANGE = (GT, LE, LT, GE)
FULL_SCAN_ROWS = 1_000_000
SKIP_SEEKS = 2_000  # what a skip scan's seeks cost, in rows read
_SQL_TYPE = {"integer": "INTEGER", "real": "REAL", "text": "TEXT", "blob": "BLOB"}


class Module:
    def __init__(self, session: Session):
        self.session = session

    def Create(self, connection, module, database, name, *args):
        table = self.session.database.tables[name.lower()]
        connection.vtab_config(apsw.SQLITE_VTAB_CONSTRAINT_SUPPORT, 1)
        columns = ", ".join(
            f'"{c.name}" {_SQL_TYPE[c.affinity]}' + (" HIDDEN" if c.name == ROWID else "")
            for c in table.columns
        )
        return f"CREATE TABLE x({columns})", VirtualTable(self.session, table)

    Connect = Create


class VirtualTable:
    def __init__(self, session: Session, table: Table):
        self.session, self.table = session, table
        self.shapes: dict[str, _Shape] = {}  # by idxStr
        self.orders = [(PRIMARY, table.primary_key, (False,) * len(table.primary_key), True)]
        for index in table.indexes:
            self.orders.append((index.id, index.columns, index.descending, False))

    def BestIndexObject(self, info: apsw.IndexInfo) -> bool:
        positions = {c.name: i for i, c in enumerate(self.table.columns)}
        usable: dict[int, list[tuple[int, int]]] = {}
        for i in range(info.nConstraint):
            if info.get_aConstraint_usable(i):
                usable.setdefault(info.get_aConstraint_iColumn(i), []).append(
                    (i, info.get_aConstraint_op(i))
                )
        best = None
        for index_id, columns, descending, primary in self.orders:
            plan = {"index": index_id, "eq": [], "range": [], "in": []}
            used: list[int] = []
            rows = float(FULL_SCAN_ROWS)
            for name in columns:
                found = usable.get(positions[name], [])
                eq = next((c for c, op in found if op == EQ), None)
                if eq is not None:
                    used.append(eq)
                    plan["eq"].append(eq)
                    rows /= 100
                    continue
                ranges = [(c, op) for c, op in found if op in RANGE]
                for c, op in ranges[:2]:
                    used.append(c)
                    plan["range"].append([c, op])
                if ranges:
                    rows /= 4
                break
            unique = primary and len(plan["eq"]) == len(columns)
            rows = 1.0 if unique else max(rows, 2.0)
            cost = rows * (1.0 if primary else 3.0) + (0 if primary else 10)
            if best is None or cost < best[0]:
                best = (cost, rows, unique, plan, used, columns, descending)
            if not used and len(columns) > 1:
                skip = self._skip_plan(index_id, usable.get(positions[columns[1]], []))
                if skip is not None:
                    plan, used, rows = skip
                    cost = rows * (1.0 if primary else 3.0) + SKIP_SEEKS
                    if cost < best[0]:
                        best = (cost, rows, False, plan, used, columns, descending)
        cost, rows, unique, plan, used, columns, descending = best
        argv = 1
        for c in used:
            info.set_aConstraintUsage_argvIndex(c, argv)
            argv += 1
            if c in plan["eq"]:
                info.set_aConstraintUsage_omit(c, True)
                if info.get_aConstraintUsage_in(c):
                    info.set_aConstraintUsage_in(c, True)
                    plan["in"].append(c)
        plan["order"] = [c for c in used]
        plan["reverse"] = self._order(info, columns, descending, positions)
        if plan.get("skip") and plan["reverse"]:
            plan["reverse"] = None  # a skip scan reads forwards only
        if plan["reverse"] is None and not plan["in"] and not plan.get("skip"):
            depth = len(plan["eq"])
            plan["reverse"] = self._order(info, columns[depth:], descending[depth:], positions)
        if plan["reverse"] is not None:
            info.orderByConsumed = True
        plan["unique"] = unique
        info.idxStr = json.dumps(plan)
        info.estimatedCost = cost
        info.estimatedRows = int(rows)
        if unique:
            info.idxFlags = apsw.SQLITE_INDEX_SCAN_UNIQUE
        return True

    @staticmethod
    def _skip_plan(index_id: int, found: list[tuple[int, int]]):
        """Skip scan: nothing constrains the index's first column but the second has an
        equality or a range (`WHERE timestamp >= ? AND timestamp < ?` on a key of
        (client_id, timestamp)); read each first-column value's matching run only."""
        eq = next((c for c, op in found if op == EQ), None)
        if eq is not None:
            return (
                {"index": index_id, "skip": True, "eq": [eq], "range": [], "in": []},
                [eq],
                (FULL_SCAN_ROWS / 100),
            )
        ranges = [[c, op] for c, op in found if op in RANGE][:2]
        if not ranges:
            return None
        plan = {"index": index_id, "skip": True, "eq": [], "range": ranges, "in": []}
        return plan, [c for c, _ in ranges], FULL_SCAN_ROWS / 8

    @staticmethod
    def _order(info, columns, descending, positions) -> bool | None:
        """True: read backwards; False: forwards; None: SQLite must sort."""
        if info.nOrderBy == 0:
            return False
        if info.nOrderBy > len(columns):
            return None
        direction = None
        for i in range(info.nOrderBy):
            if info.get_aOrderBy_iColumn(i) != positions[columns[i]]:
                return None
            reverse = bool(info.get_aOrderBy_desc(i)) != descending[i]
            if direction is None:
                direction = reverse
            elif direction != reverse:
                return None
        return direction

    def Open(self):
        return Cursor(self)

    def UpdateInsertRow(self, rowid, fields):
        return self.session.insert_row(self.table.name, list(fields))

    def UpdateDeleteRow(self, rowid):
        self.session.delete_row(self.table.name, rowid)

    def UpdateChangeRow(self, rowid, newrowid, fields):
        self.session.update_row(self.table.name, rowid, list(fields))

    def Disconnect(self):
        pass

    Destroy = Disconnect


class Cursor:
    """Steps through lists of entries (scan chunks): a row is an index into a list,
    decoded only when SQLite asks for one of its columns."""

    def __init__(self, vtable: VirtualTable):
        self.vtable = vtable
        self.session = vtable.session
        self.table = vtable.table
        self.codec = self.session.database.codec(self.table.name)
        self._close()

    def _close(self) -> None:
        self.chunks = iter(())
        self.chunk: list = []
        self.i = 0
        self.current = None
        self.decoded = None  # the current row's columns, when decoded by row
        self.columns = None  # the chunk decoded by column (rows.ChunkColumns), False: by row
        self.lists = None  # the chunk's column lists asked for so far (None: not yet)

    def Filter(self, indexnum, indexname, args):
        shape = self.vtable.shapes.get(indexname)
        if shape is None:
            shape = self.vtable.shapes[indexname] = _Shape.of(self.table, indexname)
        plan = shape.plan
        if shape.eq_types is not None and tuple(map(type, args)) == shape.eq_types:
            # equality alone, each value of its column's type (a join's probe, a lookup):
            # the key prefix at once, nothing to coerce or narrow
            ranges = [shape.base + shape.encode_eq(args)]
            if plan["unique"]:
                chunks = self._rows_by_key(ranges)
            else:
                ranges = [(ranges[0], prefix_end(ranges[0]))]
                chunks = self._seek_then_scan(ranges, bool(plan["reverse"]))
        elif plan.get("skip"):
            chunks = self._skip_chunks(shape, dict(zip(plan["order"], args, strict=True)))
        else:
            ranges = _ranges(shape, dict(zip(plan["order"], args, strict=True)))
            reverse = bool(plan["reverse"])
            if reverse:
                ranges.reverse()
            if plan["unique"]:  # a whole primary key (best_index: unique only there)
                chunks = self._rows_by_key([low for low, _ in ranges])
            else:
                chunks = self._seek_then_scan(ranges, reverse)
        if shape.index_id != PRIMARY:
            chunks = (self._rows_of(chunk, shape.descending) for chunk in chunks)
        self.chunks, self.chunk, self.i = chunks, [], -1
        self.Next()

    def _rows_by_key(self, keys: list[bytes]):
        """The rows of whole primary keys by point reads: a dict lookup when the row is
        recent, the runs its key filter rules out skipped, where a seek would search
        every source."""
        get = self.session.get
        for key in keys:
            value = get(key)
            if value is not None:
                yield [(key, value)]

    def _seek_then_scan(self, ranges: list, reverse: bool):
        """Each range's first entry by a seek (Store.first), then, if SQLite steps on, a
        scan for the rest: a LIMIT 1 never sets one up."""
        session = self.session
        for low, high in ranges:
            entry = session.first(low, high, reverse)
            if entry is None:
                continue
            yield [entry]
            if reverse:
                high = entry[0]
            else:
                low = entry[0] + b"\x00"  # the least key after it
            yield from session.scan_chunks(low, high, reverse)

    def _skip_chunks(self, shape: _Shape, by_constraint):
        """Per value of the first column, only the entries whose second column matches:
        within a chunk by bisection, across chunks by seeking to the next wanted key."""
        plan, columns, descending = shape.plan, shape.columns, shape.descending
        affinity = shape.affinities[1]
        if plan["eq"]:
            try:
                value = coerce(by_constraint[plan["eq"][0]], affinity, columns[1])
            except Exception:
                return  # a value of another type equals nothing in this column
            if value is None:
                return
            spec = [(value, GE), (value, LE)]
        else:
            spec = []
            for c, op in plan["range"]:
                try:
                    spec.append((coerce(by_constraint[c], affinity, columns[1]), op))
                except Exception:
                    continue  # SQLite checks this constraint itself
        base = shape.base
        end, position = prefix_end(base), base
        while position is not None:
            # one entry tells which value of the first column comes next ...
            head = self.session.first(position, end)
            if head is None:
                return
            key = head[0]
            group = key[: decode_value(key, len(base), descending[0])[1]]
            # ... then exactly its matching run is read: no source hands over entries
            # past it, so chunks from several sources rarely need merging
            low, high = _narrow(group, spec, descending[1], shape.encode_next)
            if high is None:
                high = end
            if high is None or low < high:
                yield from self.session.scan_chunks(low, high, first=CHUNK)
            position = prefix_end(group)

    def _rows_of(self, entries: list, descending: tuple[bool, ...]) -> list:
        """The rows that index entries point to (their keys end with the primary key)."""
        indexed, pk_count = len(descending), len(self.table.primary_key)
        order = descending + (False,) * pk_count
        rows = []
        for key, _ in entries:
            values, _ = decode_values(key, indexed + pk_count, _after_ids(key), order)
            row_key = index_prefix(self.table.id, PRIMARY) + encode_values(values[indexed:])
            value = self.session.get(row_key)
            if value is not None:
                rows.append((row_key, value))
        return rows

    def Eof(self) -> bool:
        return self.current is None

    def Next(self) -> None:
        self.i += 1
        self.decoded = None
        if self.i >= len(self.chunk):
            self.chunk = next(self.chunks, None)
            while self.chunk is not None and not self.chunk:
                self.chunk = next(self.chunks, None)
            if self.chunk is None:
                self.chunk, self.current = [], None
                return
            self.i = 0
            self.columns = self.lists = None
        self.current = self.chunk[self.i]
        self.session.rows_read += 1

    def Column(self, number: int):
        # SQLite asks for a column of every row it looks at (several per row): what was
        # decoded is found here without another call
        if number >= 0:
            row = self.decoded
            if row is not None:
                return row[number]
            lists = self.lists
            if lists is not None:
                found = lists[number]
                if found is not None:
                    return found[self.i]
        return self._column(number)

    def _column(self, number: int):
        if number == -1:
            return self.session.handle(self.current[0])
        columns = self.columns
        if columns is None:  # the chunk's first column asked for
            columns = self.columns = self.codec.chunk_columns(self.chunk) or False
            if columns:
                self.lists = [None] * len(self.table.columns)
        if columns:
            found = self.lists[number] = columns.column(number)
            return found[self.i]
        if number in self.codec.key_columns:
            return self.codec.key_value(self.current[0], number)
        row = self.decoded = self.codec.row(*self.current)
        return row[number]

    def Rowid(self) -> int:
        return self.session.handle(self.current[0])

    def Close(self) -> None:
        self._close()


@dataclass(frozen=True)
class _Shape:
    """A plan (best_index's idxStr) with what Filter needs of it worked out once: the
    index's columns, their order and affinities, and the key prefix of the index."""

    plan: dict
    index_id: int
    columns: tuple[str, ...]
    descending: tuple[bool, ...]
    affinities: tuple[str, ...]
    base: bytes
    encode_eq: Callable  # the equality values' key bytes (encode_values, or faster)
    encode_next: Callable  # a bound on the next column as key bytes (the same)
    # a plan of equalities alone (no IN, range or skip): the types its values need to
    # make a key as they come; None: other plans
    eq_types: tuple[type, ...] | None

    @classmethod
    def of(cls, table: Table, text: str) -> _Shape:
        plan = json.loads(text)
        index_id = plan["index"]
        if index_id == PRIMARY:
            columns, descending = table.primary_key, (False,) * len(table.primary_key)
        else:
            index = next(i for i in table.indexes if i.id == index_id)
            columns, descending = index.columns, index.descending
        affinities = tuple(table.column(c).affinity for c in columns)
        base = index_prefix(table.id, index_id)
        depth = 1 if plan.get("skip") else len(plan["eq"])  # a skip scan's prefix: 1
        only_eq = plan["eq"] and not (plan["in"] or plan["range"] or plan.get("skip"))
        return cls(
            plan,
            index_id,
            tuple(columns),
            tuple(descending),
            affinities,
            base,
            _encoder(affinities[:depth], descending[:depth]),
            _encoder(affinities[depth : depth + 1], descending[depth : depth + 1]),
            tuple(EXACT_TYPE[a] for a in affinities[:depth]) if only_eq else None,
        )


def _encoder(affinities: tuple[str, ...], descending: tuple[bool, ...]) -> Callable:
    """encode_values for values of these columns (coerced to their affinities)."""
    if not affinities:
        return _no_values
    if all(a == "integer" for a in affinities) and not any(descending):
        return ints_encoder(len(affinities))  # one struct call
    return functools.partial(_encode_with, descending)


def _no_values(values) -> bytes:
    return b""


def _encode_with(descending: tuple[bool, ...], values) -> bytes:
    return encode_values(values, descending)


def _narrow(prefix: bytes, spec, descending: bool, encode: Callable) -> tuple[bytes, bytes | None]:
    """[low, high) of the keys under `prefix` whose next value meets `spec`, a list of
    (value, operator) ranges (a value's key bytes by `encode`); NULL bounds match
    nothing, as in SQL."""
    low, high = prefix, prefix_end(prefix)
    for value, op in spec:
        if value is None:
            return prefix, prefix
        bound = prefix + encode((value,))
        after = prefix_end(bound)
        if descending:
            op = {GT: LT, GE: LE, LT: GT, LE: GE}[op]
        if op == GT:
            low = max(low, after)
        elif op == GE:
            low = max(low, bound)
        elif op == LT:
            high = bound if high is None else min(high, bound)
        elif op == LE:
            high = after if high is None else min(high, after)
    return low, high


def _ranges(shape: _Shape, by_constraint) -> list:
    """The key ranges [low, high) of a plan: one per combination of the equality (and IN)
    values, narrowed by the range constraints on the next column."""
    plan, columns, affinities = shape.plan, shape.columns, shape.affinities
    if plan["in"]:
        return _ranges_of_lists(shape, by_constraint)
    values = []  # one value per equality: one range (a probe of a join or a LIMIT 1)
    for n, c in enumerate(plan["eq"]):
        try:
            value = coerce(by_constraint[c], affinities[n], columns[n])
        except Exception:
            return []  # a value of another type equals nothing in this column
        if value is None:
            return []  # = NULL is never true
        values.append(value)
    return [_narrowed(shape, by_constraint, tuple(values))]


def _ranges_of_lists(shape: _Shape, by_constraint) -> list:
    """_ranges with IN lists: a range per combination of values, in key order."""
    plan, columns, affinities = shape.plan, shape.columns, shape.affinities
    choices = []
    for n, c in enumerate(plan["eq"]):
        values = by_constraint[c]
        values = values if c in plan["in"] else [values]
        kept = []
        for value in values:
            try:
                kept.append(coerce(value, affinities[n], columns[n]))
            except Exception:
                continue  # a value of another type equals nothing in this column
        choices.append(sorted(set(kept), key=lambda v: (v is None, v)) if len(kept) > 1 else kept)
    return [
        _narrowed(shape, by_constraint, combination)
        for combination in itertools.product(*choices)
        if None not in combination  # = NULL is never true
    ]


def _narrowed(shape: _Shape, by_constraint, values: tuple) -> tuple[bytes, bytes | None]:
    """The range of keys that start with `values` (the equality columns), narrowed by the
    range constraints on the next column."""
    plan, depth, descending = shape.plan, len(values), shape.descending
    prefix = shape.base + shape.encode_eq(values)
    if not plan["range"]:
        return prefix, prefix_end(prefix)
    spec = []
    for c, op in plan["range"]:
        try:
            value = coerce(by_constraint[c], shape.affinities[depth], shape.columns[depth])
        except Exception:
            continue  # SQLite checks this constraint itself
        if value is not None:
            spec.append((value, op))
    return _narrow(
        prefix, spec, descending[depth] if depth < len(descending) else False, shape.encode_next
    )


def _after_ids(key: bytes) -> int:
    """Where the values start: after the table id and index id."""
    first = 1 + key[0]
    return first + 1 + key[first]
