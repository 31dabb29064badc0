"""Free-form SQL from a model, made safe: one SELECT over exposed tables, scoped to one tenant.

The query is parsed (sqlglot), never pattern-matched. It is refused unless it is a single
SELECT (or UNION / INTERSECT / EXCEPT of SELECTs) whose every table is an exposed table of the
source or a CTE in scope, with no schema-qualified names, table functions, unknown functions,
recursive CTEs or parameter syntax of any kind (`:x`, `?`, `@x`, `$x`, `%s`…). Then every
reference to an exposed table — FROM, JOIN, `x IN table`, subqueries, CTEs, every side of a
UNION — is replaced by

    (SELECT <exposed columns> FROM <table> WHERE <tenant_column> = '<tenant>') AS <table>

The guard writes the final SQL itself, from the tree, with every identifier quoted and every
value (the tenant, a declared query's parameters) rendered as a literal by sqlglot: the SQL that
runs has **no bind parameters at all**, so nothing the model writes can take a parameter slot
(a database that still finds one refuses the statement for want of a value), and comments and
`;` chains never reach the database.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.dialects.sqlite import SQLite
from sqlglot.errors import SqlglotError
from sqlglot.optimizer.normalize_identifiers import normalize_identifiers

from relaybus.agents.errors import DataRefused

MAX_SQL_CHARS = 20_000  # with the engine's length limit, bounds what one result row can hold
MAX_COLUMNS = 100
#: how a name starts when a database would read it as a parameter that sqlglot took for a name
_PARAM_PREFIXES = ("$", "@", ":", "?", "#", "%")
Value = str | int | float | bool
logging.getLogger("sqlglot").setLevel(logging.ERROR)  # it warns on syntax it then refuses anyway


class _SQLiteOut(SQLite):
    """SQLite as the guard writes it: names in backquotes, which SQLite always reads as names (a
    double-quoted name that matches no column silently becomes a string there)."""

    class Tokenizer(SQLite.Tokenizer):
        IDENTIFIERS = ["`", '"', ("[", "]")]


def _out(dialect: str) -> str | type[SQLite]:
    return _SQLiteOut if dialect == "sqlite" else dialect


@dataclass(frozen=True)
class TablePolicy:
    columns: tuple[str, ...]
    tenant_column: str = ""  # "" only for tables shared by every tenant


def guard(
    sql: str,
    tables: Mapping[str, TablePolicy],
    dialect: str = "sqlite",
    *,
    tenant: str,
    params: Mapping[str, Value] | None = None,
) -> str:
    """The tenant-scoped SQL to run, with no bind parameters; DataRefused if unsafe.

    `params` is None for model-written SQL, which may not use parameters at all; for a query
    declared in the sources file it holds the values of its `:name` parameters, which must match
    the parameters the query uses exactly."""
    if len(sql) > MAX_SQL_CHARS:
        raise DataRefused(f"the SQL is {len(sql)} characters, over {MAX_SQL_CHARS}; shorten it")
    tree = _parse(sql, dialect)
    _refuse_unsafe(tree, declared=params is not None)
    if params is not None:
        _fill(tree, params)
    _expand_in_table(tree)
    _check_ctes(tree, tables)
    if dialect == "postgres":  # unquoted names fold to lower case: quoting them must not change it
        tree = normalize_identifiers(tree, dialect=dialect)
    scope_to = _literal(tenant, "the tenant")
    for table in list(tree.find_all(exp.Table)):
        if not isinstance(table.this, exp.Identifier):
            raise DataRefused(f"table functions are not allowed: {table.sql(dialect=dialect)}")
        if table.args.get("db") or table.args.get("catalog"):
            raise DataRefused(
                f"{table.sql(dialect=dialect)}: schema-qualified tables are not allowed; "
                f"use one of {sorted(tables)}"
            )
        name = table.name.lower()
        if name in _ctes_in_scope(table):
            continue
        policy = tables.get(name)
        if policy is None:
            raise DataRefused(f"table {table.name!r} is not exposed; use one of {sorted(tables)}")
        alias = table.args.get("alias") or exp.TableAlias(this=exp.to_identifier(table.name))
        table.replace(_scoped(name, policy, alias.copy(), scope_to))
    try:
        return tree.sql(dialect=_out(dialect), identify=True)
    except SqlglotError as exc:
        raise DataRefused(
            f"the SQL cannot be rewritten safely: {str(exc).splitlines()[0]}"
        ) from None


def _parse(sql: str, dialect: str) -> exp.Expr:
    try:
        statements = [s for s in sqlglot.parse(sql, read=dialect) if s is not None]
    except SqlglotError as exc:  # ParseError, TokenError, and the rest of the family
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        hint = " (parameters such as %s are not allowed)" if "%" in sql else ""
        raise DataRefused(f"the SQL does not parse: {first}{hint}") from None
    if len(statements) != 1:
        raise DataRefused(f"one statement only, got {len(statements)}: no ';' chains")
    tree = statements[0]
    if not isinstance(tree, exp.Query):
        raise DataRefused(
            f"only SELECT queries are allowed, not {type(tree).__name__.upper()}: "
            "the data tools are read-only"
        )
    return tree


def _refuse_unsafe(tree: exp.Expr, declared: bool) -> None:
    literal_hint = "write the value into the SQL as a literal, e.g. product = 'widget'"
    for node in tree.walk():
        if isinstance(node, (exp.DML, exp.DDL, exp.Command, exp.Pragma, exp.Into)):
            raise DataRefused(f"{type(node).__name__.upper()} is not allowed inside a query")
        if isinstance(node, exp.Anonymous):
            raise DataRefused(f"function {node.name}() is not allowed")
        if isinstance(node, exp.Placeholder):
            if not declared:
                raise DataRefused(
                    f"parameters are not allowed in free-form SQL (found {node.sql()}); "
                    + literal_hint
                )
            if node.this is None:
                raise DataRefused("use named parameters (:name), not positional ones (?)")
        if isinstance(node, (exp.Parameter, exp.SessionParameter)):
            raise DataRefused(f"parameters are not allowed (found {node.sql()}); {literal_hint}")
        if isinstance(node, exp.Identifier) and node.name.startswith(_PARAM_PREFIXES):
            raise DataRefused(
                f"{node.name!r} reads as a parameter to the database and is not allowed; "
                + literal_hint
            )
        if isinstance(node, exp.Select) and len(node.expressions) > MAX_COLUMNS:
            raise DataRefused(
                f"a SELECT may list at most {MAX_COLUMNS} columns, this one has "
                f"{len(node.expressions)}"
            )


def _fill(tree: exp.Expr, params: Mapping[str, Value]) -> None:
    """Replace each `:name` of a declared query by its value, as a literal."""
    placeholders = list(tree.find_all(exp.Placeholder))
    used = {p.name for p in placeholders}
    missing = sorted(used - set(params))
    if missing:
        raise DataRefused(f"the query uses :{missing[0]} but no value was given for it")
    unused = sorted(set(params) - used)
    if unused:
        raise DataRefused(f"parameter {unused[0]!r} is not used by the query")
    for placeholder in placeholders:
        placeholder.replace(_literal(params[placeholder.name], f"parameter {placeholder.name}"))


def _literal(value: object, what: str) -> exp.Expression:
    if isinstance(value, bool):
        return exp.Boolean(this=value)
    if isinstance(value, float) and not math.isfinite(value):
        raise DataRefused(f"{what}: {value} is not a finite number")
    if isinstance(value, (int, float)):
        number = exp.Literal.number(repr(abs(value)))
        return exp.Paren(this=exp.Neg(this=number)) if value < 0 else number
    if isinstance(value, str):
        if "\x00" in value:
            raise DataRefused(f"{what}: a NUL character cannot be part of a value")
        return exp.Literal.string(value)
    raise DataRefused(f"{what}: a {type(value).__name__} cannot be a value; use str, int or float")


def _expand_in_table(tree: exp.Expr) -> None:
    """`x IN t` (SQLite: the rows of table t) becomes `x IN (SELECT * FROM t)`, so the table is
    scoped like any other reference."""
    for node in list(tree.find_all(exp.In)):
        field = node.args.get("field")
        if field is None:
            continue
        if not isinstance(field, exp.Column) or field.table:
            raise DataRefused(f"IN {field.sql()}: write IN (SELECT column FROM table) instead")
        table = exp.Table(this=field.this.copy())
        field.replace(exp.Subquery(this=exp.select("*").from_(table)))


def _check_ctes(tree: exp.Expr, tables: Mapping[str, TablePolicy]) -> None:
    for with_ in tree.find_all(exp.With):
        if with_.args.get("recursive"):
            raise DataRefused(
                "recursive CTEs (WITH RECURSIVE) are not allowed: they can run without bound; "
                "query the tables directly"
            )
    for cte in tree.find_all(exp.CTE):
        name = cte.alias_or_name.lower()
        if name in tables:
            raise DataRefused(f"a CTE may not reuse the name of table {name}")
        if any(t.name.lower() == name for t in cte.this.find_all(exp.Table)):
            raise DataRefused(
                f"CTE {name} refers to itself, which makes it recursive; that is not allowed"
            )


def _ctes_in_scope(table: exp.Table) -> set[str]:
    """The CTE names a table reference can mean: those of every WITH around it."""
    names: set[str] = set()
    node = table.parent
    while node is not None:
        with_ = node.args.get("with_") if isinstance(node, exp.Query) else None
        if isinstance(with_, exp.With):
            names |= {cte.alias_or_name.lower() for cte in with_.expressions}
        node = node.parent
    return names


def _scoped(
    name: str, policy: TablePolicy, alias: exp.Expression, tenant: exp.Expression
) -> exp.Expression:
    inner = exp.select(*[exp.column(c, quoted=True) for c in policy.columns]).from_(
        exp.Table(this=exp.to_identifier(name, quoted=True))
    )
    if policy.tenant_column:
        inner = inner.where(
            exp.EQ(this=exp.column(policy.tenant_column, quoted=True), expression=tenant.copy())
        )
    return exp.Subquery(this=inner, alias=alias)


def tenant_views(name: str, policy: TablePolicy, tenant: str, wall: str) -> list[str]:
    """SQLite: the temp views that wall table `name` off, for one connection. `wall` (a name
    the model cannot know) is a view of `main.<name>` with the tenant's rows only; the temp view
    `<name>` reads it. An unqualified name resolves to the temp schema first, so even a reference
    the rewrite missed reads through both, and the engine's authorizer lets `main.<name>` be read
    from `wall` only (a CTE named `<name>` does not pass)."""
    columns = [*policy.columns, *([policy.tenant_column] if policy.tenant_column else [])]
    select = exp.select(*[exp.column(c, quoted=True) for c in dict.fromkeys(columns)]).from_(
        exp.Table(this=exp.to_identifier(name, quoted=True), db=exp.to_identifier("main"))
    )
    if policy.tenant_column:
        select = select.where(
            exp.EQ(
                this=exp.column(policy.tenant_column, quoted=True),
                expression=_literal(tenant, "the tenant"),
            )
        )
    inner, outer = (exp.to_identifier(n, quoted=True).sql(dialect=_SQLiteOut) for n in (wall, name))
    return [
        f"CREATE TEMP VIEW {inner} AS {select.sql(dialect=_SQLiteOut, identify=True)}",
        f"CREATE TEMP VIEW {outer} AS SELECT * FROM `temp`.{inner}",
    ]
