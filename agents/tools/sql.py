"""The SQL tools: read-only, tenant-scoped queries over SQLAlchemy (SQLite embedded by default,
PostgreSQL when the source's url says so), cut off at a time limit and truncated at a size limit.

Per source NAME: one tool per named query (`NAME.<query>`: the model fills typed parameters) and,
with `free_form = true`, `NAME.sql` (the model writes a SELECT; `sqlguard` parses and scopes it).
All take the scope `data/query/NAME`. The tenant is the run's verified principal, never an
argument; every query is audited with the chain.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pydantic
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from bus import ConfigError, DataRefused

from ..tool import Tool
from .config import SqlSource, params_model
from .sqlguard import TENANT_PARAM, TablePolicy, guard

_ALLOWED_SQLITE = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}


class SqlDatabase:
    """One configured source: a read-only engine plus its table policy."""

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
        url = make_url(source.url)
        self._deadline = threading.local()
        if url.drivername.startswith("sqlite"):
            self.dialect = "sqlite"
            path = Path(url.database or "")
            if not url.database or not path.is_file():
                raise ConfigError(f"[sql.{name}] url {source.url}: no SQLite file at {path}")
            self.engine = sa.create_engine(
                "sqlite://", creator=lambda: self._open_sqlite(path), poolclass=sa.pool.NullPool
            )
        else:
            if not url.drivername.startswith("postgres"):
                raise ConfigError(
                    f"[sql.{name}] url {source.url}: SQLite and PostgreSQL are supported "
                    "(read-only enforcement is specific to each)"
                )
            self.dialect = "postgres"
            self.engine = sa.create_engine(source.url, pool_pre_ping=True)

    def _open_sqlite(self, path: Path) -> sqlite3.Connection:
        conn = sqlite3.connect(
            f"file:{quote(str(path.resolve()))}?mode=ro", uri=True, check_same_thread=False
        )
        conn.execute("PRAGMA query_only = ON")
        readable = {
            (t, c) for t, p in self.tables.items() for c in (*p.columns, p.tenant_column) if c
        }

        def authorize(
            action: int, arg1: str | None, arg2: str | None, database: str | None, *_: Any
        ) -> int:
            # the engine's own check, under the parser's: reads of exposed columns only
            # (database is None for CTEs, which read nothing stored by themselves)
            if action in _ALLOWED_SQLITE:
                return sqlite3.SQLITE_OK
            if action == sqlite3.SQLITE_PRAGMA and arg1 == "read_uncommitted" and arg2 is None:
                return sqlite3.SQLITE_OK  # SQLAlchemy reads the isolation level on connect
            if action == sqlite3.SQLITE_READ and (
                database is None or ((arg1 or "").lower(), arg2 or "") in readable
            ):
                return sqlite3.SQLITE_OK
            return sqlite3.SQLITE_DENY

        conn.set_authorizer(authorize)
        conn.set_progress_handler(self._over_time, 2000)
        return conn

    def _over_time(self) -> int:
        return int(time.monotonic() > getattr(self._deadline, "at", float("inf")))

    def run(self, sql: str, params: dict[str, Any], tenant: str) -> dict[str, Any]:
        """Guard, scope and run one query (blocking: call through `query`)."""
        scoped, used = guard(sql, self.tables, self.dialect)
        missing = sorted(used - set(params))
        if missing:
            raise DataRefused(f"the query uses :{missing[0]} but no value was given for it")
        unused = sorted(set(params) - used)
        if unused:
            raise DataRefused(f"parameter {unused[0]!r} is not used by the query")
        values = {**params, TENANT_PARAM: tenant}
        limit, budget = self.source.max_rows, self.source.max_bytes
        rows: list[list[Any]] = []
        size, truncated, note = 0, False, ""
        self._deadline.at = time.monotonic() + self.source.timeout_s
        try:
            with self.engine.connect() as conn:
                if self.dialect == "postgres":
                    conn.exec_driver_sql("SET TRANSACTION READ ONLY")
                    conn.exec_driver_sql(
                        f"SET LOCAL statement_timeout = {int(self.source.timeout_s * 1000)}"
                    )
                result = conn.execute(sa.text(scoped), values)
                columns = list(result.keys())
                for row in result:
                    cells = [_cell(v) for v in row]
                    size += len(json.dumps(cells, default=str))
                    if len(rows) >= limit or size > budget:
                        truncated = True
                        note = (
                            f"result cut at {len(rows)} rows "
                            f"({'row' if len(rows) >= limit else 'size'} limit of "
                            f"{limit if len(rows) >= limit else budget}"
                            f"{'' if len(rows) >= limit else ' bytes'}); narrow the query"
                        )
                        break
                    rows.append(cells)
                conn.rollback()
        except sa.exc.OperationalError as exc:
            if "interrupted" in str(exc.orig) or "statement timeout" in str(exc.orig):
                raise DataRefused(
                    f"the query ran over {self.source.timeout_s}s and was cut off; narrow it"
                ) from None
            raise DataRefused(f"the database refused the query: {exc.orig}") from None
        except sa.exc.DatabaseError as exc:
            raise DataRefused(f"the database refused the query: {exc.orig}") from None
        finally:
            self._deadline.at = float("inf")
        return {"columns": columns, "rows": rows, "truncated": truncated, "note": note}

    async def query(self, sql: str, params: dict[str, Any], tenant: str) -> dict[str, Any]:
        return await asyncio.to_thread(self.run, sql, params, tenant)

    def close(self) -> None:
        self.engine.dispose()


def _cell(value: Any) -> Any:
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)


class FreeForm(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    sql: str = pydantic.Field(description="one SELECT over the exposed tables; :name parameters")
    params: dict[str, str | int | float | bool] = {}


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
        guard(named.sql, db.tables, db.dialect)  # fail at load
        model = params_model(f"{db.name}_{qname}", named.params)

        async def run_named(
            ctx: Any, args: pydantic.BaseModel, _sql: str = named.sql, _name: str = qname
        ) -> Any:
            result = await db.query(_sql, args.model_dump(), _tenant(ctx))
            await audit(ctx, f"{db.name}.{_name}", _sql, result)
            return result

        tools[f"{db.name}.{qname}"] = Tool(
            name=f"{db.name}.{qname}", scope=scope, cost=db.source.cost, model=model,
            fn=run_named, wants_ctx=True,
        )  # fmt: skip
    if db.source.free_form:

        async def run_free(ctx: Any, args: FreeForm) -> Any:
            result = await db.query(args.sql, dict(args.params), _tenant(ctx))
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
