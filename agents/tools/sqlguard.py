"""Free-form SQL from a model, made safe: one SELECT over exposed tables, scoped to one tenant.

The query is parsed (sqlglot), never pattern-matched. It is refused unless it is a single
SELECT (or UNION / INTERSECT / EXCEPT of SELECTs) whose every table is an exposed table of the
source or a CTE it defines, with no schema-qualified names, table functions, unknown functions or
positional parameters. Then every reference to an exposed table — in FROM, JOIN, subqueries,
CTEs, every side of a UNION — is replaced by

    (SELECT <exposed columns> FROM <table> WHERE <tenant_column> = :relaybus_tenant) AS <table>

so the model sees only its tenant's rows and only the exposed columns, whatever it wrote. The
SQL that runs is regenerated from the tree: comments and `;` chains never reach the database.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError

from bus import DataRefused

TENANT_PARAM = "relaybus_tenant"
logging.getLogger("sqlglot").setLevel(logging.ERROR)  # it warns on syntax it then refuses anyway


@dataclass(frozen=True)
class TablePolicy:
    columns: tuple[str, ...]
    tenant_column: str = ""  # "" only for tables shared by every tenant


def guard(
    sql: str, tables: dict[str, TablePolicy], dialect: str = "sqlite"
) -> tuple[str, set[str]]:
    """The tenant-scoped SQL to run, and the named parameters it uses; DataRefused if unsafe."""
    try:
        statements = [s for s in sqlglot.parse(sql, read=dialect) if s is not None]
    except ParseError as exc:
        raise DataRefused(f"the SQL does not parse: {str(exc).splitlines()[0]}") from None
    if len(statements) != 1:
        raise DataRefused(f"one statement only, got {len(statements)}: no ';' chains")
    tree = statements[0]
    if not isinstance(tree, exp.Query):
        raise DataRefused(
            f"only SELECT queries are allowed, not {type(tree).__name__.upper()}: the data tools are read-only"
        )
    for node in tree.walk():
        if isinstance(node, (exp.DML, exp.DDL, exp.Command, exp.Pragma, exp.Into)):
            raise DataRefused(f"{type(node).__name__.upper()} is not allowed inside a query")
        if isinstance(node, exp.Anonymous):
            raise DataRefused(f"function {node.name}() is not allowed")
        if isinstance(node, exp.Placeholder) and node.this is None:
            raise DataRefused("use named parameters (:name), not positional ones (?)")
    ctes = {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}
    shadowing = ctes & set(tables)
    if shadowing:
        raise DataRefused(f"a CTE may not reuse the name of table {sorted(shadowing)[0]}")
    params = {p.name for p in tree.find_all(exp.Placeholder)}
    if TENANT_PARAM in params:
        raise DataRefused(f"parameter :{TENANT_PARAM} is reserved for the tenant")
    for table in list(tree.find_all(exp.Table)):
        if not isinstance(table.this, exp.Identifier):
            raise DataRefused(f"table functions are not allowed: {table.sql(dialect=dialect)}")
        if table.args.get("db") or table.args.get("catalog"):
            raise DataRefused(
                f"{table.sql(dialect=dialect)}: schema-qualified tables are not allowed; "
                f"use one of {sorted(tables)}"
            )
        name = table.name.lower()
        if name in ctes:
            continue
        policy = tables.get(name)
        if policy is None:
            raise DataRefused(f"table {table.name!r} is not exposed; use one of {sorted(tables)}")
        table.replace(_scoped(name, policy, table.alias_or_name))
    return tree.sql(dialect=dialect), params


def _scoped(name: str, policy: TablePolicy, alias: str) -> exp.Expression:
    inner = exp.select(*[exp.column(c, quoted=True) for c in policy.columns]).from_(
        exp.to_identifier(name, quoted=True)
    )
    if policy.tenant_column:
        inner = inner.where(
            exp.EQ(
                this=exp.column(policy.tenant_column, quoted=True),
                expression=exp.Placeholder(this=TENANT_PARAM),
            )
        )
    return exp.Subquery(
        this=inner, alias=exp.TableAlias(this=exp.to_identifier(alias, quoted=True))
    )
