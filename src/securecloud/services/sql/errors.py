"""SQL errors with the SQLSTATE a PostgreSQL client expects (docs/sql.md lists them)."""

from __future__ import annotations


class SqlError(Exception):
    sqlstate = "XX000"

    def __init__(self, message: str, sqlstate: str | None = None):
        super().__init__(message)
        if sqlstate is not None:
            self.sqlstate = sqlstate


class SyntaxProblem(SqlError):
    sqlstate = "42601"


class UndefinedTable(SqlError):
    sqlstate = "42P01"


class DuplicateTable(SqlError):
    sqlstate = "42P07"


class UndefinedColumn(SqlError):
    sqlstate = "42703"


class TypeMismatch(SqlError):
    sqlstate = "22P02"


class UniqueViolation(SqlError):
    sqlstate = "23505"


class NotNullViolation(SqlError):
    sqlstate = "23502"


class Unsupported(SqlError):
    sqlstate = "0A000"


class SerializationFailure(SqlError):
    sqlstate = "40001"


class TransactionState(SqlError):
    sqlstate = "25000"


class InFailedTransaction(SqlError):
    sqlstate = "25P02"
