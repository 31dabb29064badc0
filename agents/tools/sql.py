"""The SQL tools: read-only, tenant-scoped queries (SQLite embedded by default, PostgreSQL through
SQLAlchemy when the source's url says so), cut off at a time limit and truncated at a size limit.

Per source NAME: one tool per named query (`NAME.<query>`: the model fills typed parameters) and,
with `free_form = true`, `NAME.sql` (the model writes a SELECT; `sqlguard` parses and scopes it).
All take the scope `data/query/NAME`. The tenant is the run's verified principal, never an
argument; every query is audited with the chain.

The SQL that runs is the guard's, with no bind parameters (values are literals it rendered), and
is sent as is (sqlite3 `execute`, SQLAlchemy `exec_driver_sql` with `no_parameters`): no layer
parses `:name` or `%s` out of it. SQLite adds its own wall around the rewrite: each query gets a
fresh read-only connection whose temp schema holds, per exposed table, a view under a secret name
with the tenant's rows only and a view under the table's name reading it (unqualified names
resolve to the temp schema first); an authorizer that lets stored rows be read only from the
secret views (not from a CTE named like the table), refuses recursive queries and PRAGMAs; and a
progress handler that stops the query at the time limit. `SQLITE_LIMIT_LENGTH` caps every string, blob and row
the query builds, so memory cannot grow faster than the time limit allows.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sqlite3
import time
from pathlib import Path
from typing import Any

import pydantic
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from relaybus.agents.errors import DataRefused
from relaybus.bus import ConfigError

from ..tool import Tool
from .config import SqlSource, params_model
from .sqlguard import TablePolicy, Value, guard, tenant_views

_DENIED_FUNCTIONS = {"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer"}
_SAMPLE: dict[str, Value] = {"str": "", "int": 0, "float": 0.0, "bool": False}
MIN_LENGTH_LIMIT = 100_000  # bytes: the smallest SQLITE_LIMIT_LENGTH a source gets


class SqlDatabase:
    """One configured source: how to open it read-only, plus its table policy."""

    def __init__(self, name: str, source: SqlSource) -> None:
        self.name, self.source = name, source
        self.tables = {
            t.lower(): TablePolicy(tuple(spec.columns), spec.tenant_column)
            for t, spec in source.tables.items()
        }
        for table, spec in source.tables.items():
            if not spec.tenant_column and not spec.shared:
                raise ConfigError(
                    f"[sql.{name}.tables.{table}]: set tenant_column (rows per tenant) or "
                    "shared = true (every tenant reads every row)"
                )
        #: the longest string, blob or row a SQLite query may build
        self.max_length = max(source.max_bytes, MIN_LENGTH_LIMIT)
        self.engine: sa.Engine | None = None
        url = make_url(source.url)
        if url.drivername.startswith("sqlite"):
            self.dialect = "sqlite"
            self.path = Path(url.database or "")
            if not url.database or not self.path.is_file():
                raise ConfigError(f"[sql.{name}] url {source.url}: no SQLite file at {self.path}")
        else:
            if not url.drivername.startswith("postgres"):
                raise ConfigError(
                    f"[sql.{name}] url {source.url}: SQLite and PostgreSQL are supported "
                    "(read-only enforcement is specific to each)"
                )
            self.dialect = "postgres"
            self.engine = sa.create_engine(source.url, pool_pre_ping=True)

    def run(self, sql: str, tenant: str, params: dict[str, Value] | None = None) -> dict[str, Any]:
        """Guard, scope and run one query (blocking: call through `query`). `params` is None
        for model-written SQL (no parameters allowed) and the values of a declared query's."""
        scoped = guard(sql, self.tables, self.dialect, tenant=tenant, params=params)
        if self.dialect == "sqlite":
            return self._run_sqlite(scoped, tenant)
        return self._run_postgres(scoped)

    async def query(
        self, sql: str, tenant: str, params: dict[str, Value] | None = None
    ) -> dict[str, Any]:
        return await asyncio.to_thread(self.run, sql, tenant, params)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.dispose()

    # -- SQLite ---------------------------------------------------------------------------------

    def _run_sqlite(self, scoped: str, tenant: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.source.timeout_s
        conn: sqlite3.Connection | None = None
        try:
            conn = self._open_sqlite(tenant, deadline)
            cursor = conn.execute(scoped, ())  # no values: a parameter slot is an error
            return self._collect([d[0] for d in cursor.description or ()], cursor)
        except sqlite3.Error as exc:
            if "interrupted" in str(exc):
                raise self._too_slow() from None
            if "too big" in str(exc):
                raise DataRefused(
                    f"the query built a value or row over {self.max_length} bytes and was "
                    "stopped; narrow it"
                ) from None
            raise DataRefused(f"the database refused the query: {exc}") from None
        finally:
            if conn is not None:
                conn.close()

    def _open_sqlite(self, tenant: str, deadline: float) -> sqlite3.Connection:
        conn = sqlite3.connect(
            f"{self.path.resolve().as_uri()}?mode=ro",
            uri=True,
            isolation_level=None,  # no implicit BEGIN: nothing but the query runs
        )
        token = secrets.token_hex(8)
        walls = {f"relaybus_{token}_{name}": name for name in self.tables}
        try:
            for wall, name in walls.items():
                for view in tenant_views(name, self.tables[name], tenant, wall):
                    conn.execute(view)
            conn.execute("PRAGMA query_only = ON")
            conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, self.max_length)
            conn.set_authorizer(self._authorizer(walls))
            conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)
        except BaseException:
            conn.close()
            raise
        return conn

    def _authorizer(self, walls: dict[str, str]) -> Any:
        """`walls`: the connection's secret view names, each to the table it scopes."""
        readable = {
            (t, c) for t, p in self.tables.items() for c in (*p.columns, p.tenant_column) if c
        }
        views = {**{t: t for t in self.tables}, **walls}

        def authorize(
            action: int, arg1: str | None, arg2: str | None, database: str | None, inner: str | None
        ) -> int:
            # the engine's own wall, under the parser's: stored rows are read only through the
            # secret tenant views (`inner`: the innermost view or CTE a read comes from); the
            # temp schema holds nothing but the views. No recursion, no PRAGMA, no writes.
            if action == sqlite3.SQLITE_SELECT:
                return sqlite3.SQLITE_OK
            if action == sqlite3.SQLITE_FUNCTION:
                denied = (arg2 or "").lower() in _DENIED_FUNCTIONS
                return sqlite3.SQLITE_DENY if denied else sqlite3.SQLITE_OK
            if action == sqlite3.SQLITE_READ:
                if database == "temp":  # a column of one of the views
                    table = views.get((arg1 or "").lower(), "")
                elif database == "main" and walls.get(inner or "") == (arg1 or "").lower():
                    table = (arg1 or "").lower()
                else:
                    table = ""
                if (table, arg2 or "") in readable:
                    return sqlite3.SQLITE_OK
            return sqlite3.SQLITE_DENY

        return authorize

    # -- PostgreSQL -----------------------------------------------------------------------------

    def _run_postgres(self, scoped: str) -> dict[str, Any]:
        assert self.engine is not None
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("SET TRANSACTION READ ONLY")
                conn.exec_driver_sql(
                    f"SET LOCAL statement_timeout = {int(self.source.timeout_s * 1000)}"
                )
                conn.exec_driver_sql("SET LOCAL standard_conforming_strings = on")
                # as is: the driver does no %-interpolation on a statement without parameters
                result = conn.execution_options(no_parameters=True).exec_driver_sql(scoped)
                out = self._collect(list(result.keys()), result)
                conn.rollback()
                return out
        except sa.exc.OperationalError as exc:
            if "statement timeout" in str(exc.orig):
                raise self._too_slow() from None
            raise DataRefused(f"the database refused the query: {exc.orig}") from None
        except sa.exc.DatabaseError as exc:
            raise DataRefused(f"the database refused the query: {exc.orig}") from None

    # -- both -----------------------------------------------------------------------------------

    def _too_slow(self) -> DataRefused:
        return DataRefused(
            f"the query ran over {self.source.timeout_s}s and was cut off; narrow it"
        )

    def _collect(self, columns: list[str], result: Any) -> dict[str, Any]:
        limit, budget = self.source.max_rows, self.source.max_bytes
        rows: list[list[Any]] = []
        size, truncated, note = 0, False, ""
        for row in result:
            cells = [_cell(v) for v in row]
            size += len(json.dumps(cells, default=str))
            if len(rows) >= limit or size > budget:
                truncated = True
                by_rows = len(rows) >= limit
                note = (
                    f"result cut at {len(rows)} rows ({'row' if by_rows else 'size'} limit of "
                    f"{limit if by_rows else f'{budget} bytes'}); narrow the query"
                )
                break
            rows.append(cells)
        return {"columns": columns, "rows": rows, "truncated": truncated, "note": note}


def _cell(value: Any) -> Any:
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)


class FreeForm(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    sql: str = pydantic.Field(
        description="one SELECT over the exposed tables; write values as literals "
        "(e.g. product = 'widget'): parameters are not accepted"
    )


def sql_tools(db: SqlDatabase) -> dict[str, Tool]:
    scope = f"data/query/{db.name}"
    tools: dict[str, Tool] = {}

    async def audit(ctx: Any, tool: str, sql: str, result: dict[str, Any]) -> None:
        await ctx.audit(
            scope,
            tool=tool,
            detail={"sql": sql, "rows": len(result["rows"]), "truncated": result["truncated"]},
        )

    for qname, named in db.source.queries.items():
        sample = {p: _SAMPLE[kind] for p, kind in named.params.items()}
        guard(named.sql, db.tables, db.dialect, tenant="", params=sample)  # fail at load
        model = params_model(f"{db.name}_{qname}", named.params)

        async def run_named(
            ctx: Any, args: pydantic.BaseModel, _sql: str = named.sql, _name: str = qname
        ) -> Any:
            result = await db.query(_sql, _tenant(ctx), args.model_dump())
            await audit(ctx, f"{db.name}.{_name}", _sql, result)
            return result

        tools[f"{db.name}.{qname}"] = Tool(
            name=f"{db.name}.{qname}", scope=scope, cost=db.source.cost, model=model,
            fn=run_named, wants_ctx=True,
        )  # fmt: skip
    if db.source.free_form:

        async def run_free(ctx: Any, args: FreeForm) -> Any:
            result = await db.query(args.sql, _tenant(ctx))
            await audit(ctx, f"{db.name}.sql", args.sql, result)
            return result

        tools[f"{db.name}.sql"] = Tool(
            name=f"{db.name}.sql", scope=scope, cost=db.source.cost, model=FreeForm,
            fn=run_free, wants_ctx=True,
        )  # fmt: skip
    return tools


def _tenant(ctx: Any) -> str:
    principal = str(ctx.principal)
    if not principal:
        raise DataRefused("no principal for this run: data tools need a user at the chain's root")
    return principal.removeprefix("user:")
