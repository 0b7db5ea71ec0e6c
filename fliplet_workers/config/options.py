"""Every config option, declared once: the table the loaders, the checks and the docs derive from.

Like celery's ``app/defaults.py``, each :class:`Option` says what an option is called (its YAML name,
the original's camelCase name for code configs, other accepted spellings), where it is allowed, how
its value is read (a parser from :mod:`.parsers`, or ``None`` when a reader of its own handles its
structure), whether it is a secret, its default and one line of documentation. From :data:`OPTIONS`
come the names each mapping of a YAML or code config accepts (and so the did-you-mean for unknown
keys), the options only a push or only a pull may set, which values are registered for redaction,
and the README's option reference (:mod:`.reference`). Adding an option is adding a row here (plus
the model field it fills); the error messages stay in :mod:`.section` and the readers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fliplet_workers.config.parsers import (
    Parse,
    auth_token,
    choice,
    cron,
    delete_limit,
    existing_file,
    flag,
    full_refresh,
    http_url,
    mapping,
    seconds,
    strings,
    text,
    time_zone,
    whole,
)
from fliplet_workers.config.section import Names

__all__ = [
    "CODE_DATABASE",
    "CODE_OPERATION",
    "CODE_SETTINGS",
    "DATABASE_PARTS",
    "DIALECT_OPTIONS",
    "DRIVERS",
    "DRIVER_ALIASES",
    "ENCRYPT",
    "FILES",
    "OPTIONS",
    "Format",
    "PULL_ONLY",
    "PUSH_ONLY",
    "YAML_OPTIONS",
    "YAML_TOP",
    "Option",
    "Where",
    "options_in",
]

#: Where an option may be written: the config's settings, its database settings, a push or a pull
#: operation, an item of ``files``, or ``encrypt``.
Where = Literal["settings", "database", "push", "pull", "files", "encrypt"]
Format = Literal["yaml", "code"]

DRIVERS = ("mysql", "sqlite", "postgres", "mssql")
DRIVER_ALIASES = {"mariadb": "mysql", "postgresql": "postgres", "sqlserver": "mssql"}
MODES = ("update", "replace")
VERBOSITIES = ("debug", "info", "critical")
HOOKS = ("insert", "update")
FILE_TYPES = ("remote", "local", "sharepoint")


@dataclass(frozen=True)
class Option:
    """One option: its names, where it is allowed, how it is read, and its documentation line."""

    name: str  # canonical: the model's field, and the YAML key (database options: after "database_")
    where: tuple[Where, ...]
    doc: str
    #: The original agent's camelCase name (its JavaScript configs): preferred in code configs.
    alias: str | None = None
    #: More spellings code configs accept.
    also: tuple[str, ...] = ()
    type: str = "string"  # how the reference describes the value
    parse: Parse | None = None  # None: read by a reader of its own (structure or functions)
    default: str = ""  # as the reference shows it; "" for none
    secret: bool = False
    yaml: bool = True  # allowed in YAML configs
    code: bool = True  # allowed in code configs
    snake: bool = True  # code configs accept ``name`` itself too
    dialect: bool = False  # database: also allowed in code configs' ``dialectOptions``

    @property
    def yaml_key(self) -> str:
        """The key in a YAML config, which is flat: database options carry a ``database_`` prefix."""
        return f"database_{self.name}" if "database" in self.where else self.name

    @property
    def code_names(self) -> tuple[str, ...]:
        """Every spelling a code config accepts, the preferred (the original's) first."""
        names = (self.alias,) if self.alias else ()
        return names + ((self.name,) if self.snake else ()) + self.also


S: tuple[Where, ...] = ("settings",)
DB: tuple[Where, ...] = ("database",)
PUSH: tuple[Where, ...] = ("push",)
PULL: tuple[Where, ...] = ("pull",)
OP: tuple[Where, ...] = ("push", "pull")

#: The table. Within a mapping, options are read in this order (and problems on one line follow it).
OPTIONS: tuple[Option, ...] = (
    # --- settings -----------------------------------------------------------------------------------
    Option("auth_token", S, "Fliplet API token from Fliplet Studio", alias="authToken", secret=True,
           parse=auth_token(), default="required"),
    Option("api_url", S, "the API base URL instead of the token's region (how the sandbox is reached)",
           alias="baseURL", also=("apiUrl",), parse=http_url(), type="http(s) URL",
           default="the token's region"),
    Option("ca_bundle", S, "a PEM file of extra CA certificates (a corporate proxy), relative to the config; "
           "TLS verification stays on", alias="caBundle", parse=existing_file(), type="file"),
    Option("sync_on_init", S, "also run every operation when the agent starts", alias="syncOnInit",
           parse=flag(), type="true/false", default="false (code configs: true)"),
    Option("is_dry_run", S, "test the integration without sending any data (like `--test`)", alias="isDryRun",
           parse=flag(), type="true/false", default="false", yaml=False),
    Option("log_verbosity", S, "how much is logged", alias="logVerbosity",
           parse=choice(VERBOSITIES, ignore_case=True), type=" \\| ".join(VERBOSITIES), default="debug"),
    Option("retries", S, "retries of a failed Fliplet API request (a lookup after an unanswered commit "
           "gets as many); 0: never retry", parse=whole(minimum=0), type="whole number", default="5"),
    Option("timeout", S, "seconds one Fliplet API request may take (a commit that got no answer is given as "
           "long again, plus 1 s, to land before its missing rows are sent again)", parse=seconds(),
           type="seconds", default="60"),
    Option("retry_delay", S, "seconds before the first retry, doubling each try", alias="retryDelay",
           parse=seconds(), type="seconds", default="1"),
    Option("query_timeout", S, "seconds the database may take to connect, or to answer one statement or one "
           "fetch of rows. See [When the database stops answering](#when-the-database-stops-answering)",
           alias="queryTimeout", parse=seconds(), type="seconds", default="300"),
    Option("timezone", S, "IANA name (`Asia/Tokyo`) of the zone `frequency` is read in. See "
           "[Time zones](#time-zones)", also=("timeZone",), parse=time_zone(), type="time zone",
           default="`FLIPLET_TIMEZONE`, else the host's"),
    Option("alert_webhook", S, "a URL that receives a JSON POST when a run fails and when the next one "
           "recovers. See [Alerts](#alerts)", alias="alertWebhook", secret=True, parse=http_url(),
           type="http(s) URL"),
    Option("batch_size", S, "the default `batchSize` of every push operation", alias="batchSize",
           parse=whole(), type="whole number", default="1000", yaml=False),
    Option("database", S, "the database settings (Sequelize's format: the `database` rows below)",
           type="dict", yaml=False),
    # --- database -----------------------------------------------------------------------------------
    Option("driver", DB, "the database: " + ", ".join(DRIVERS) + " (mariadb, postgresql and sqlserver are "
           "accepted too)", alias="dialect", type="name", default="required with a database"),
    Option("host", DB, "the database server", type="host name"),
    Option("port", DB, "its port", type="1-65535", default="the driver's"),
    Option("name", DB, "the database name; for sqlite the file, relative to the config", alias="database",
           also=("storage",)),
    Option("username", DB, "the database user"),
    Option("password", DB, "the user's password (written as a number, it is used as written)", secret=True),
    Option("domain", DB, "SQL Server: the Windows domain", dialect=True),
    Option("instance", DB, "SQL Server: the named instance", alias="instanceName", dialect=True),
    Option("encrypt", DB, "SQL Server: encrypt the connection", type="true/false", dialect=True),
    Option("native_odbc", DB, "SQL Server: connect through ODBC and its native driver (the `odbc` extra)",
           alias="nativeOdbc", type="true/false", default="false"),
    Option("url", DB, "a SQLAlchemy URL instead of the parts above (not with host, port, name, username, "
           "password). Plain schemes use the drivers the package installs: `postgresql://` and "
           "`postgres://` → psycopg2, `mysql://` and `mariadb://` → PyMySQL, `mssql://` → pymssql (the "
           "`mssql` extra); a URL that names its driver (`postgresql+psycopg://`) is used as written",
           secret=True, type="URL"),
    Option("dialect_module_path", DB,
           "`sequelize-odbc-mssql` (the only value understood) turns on native ODBC",
           alias="dialectModulePath", snake=False, yaml=False),
    Option("dialect_options", DB, "a dict that may hold `domain`, `instanceName` and `encrypt`",
           alias="dialectOptions", type="dict", yaml=False),
    # --- operations ---------------------------------------------------------------------------------
    Option("type", OP, "the kind of operation (code configs call `agent.push` or `agent.pull`)",
           type="push \\| pull", default="push", code=False),
    Option("datasource_id", OP, "the ID of the Fliplet Data Source (give your token access to it)",
           alias="targetDataSourceId", parse=whole(required=True), type="whole number", default="required"),
    Option("description", OP, "printed in the logs", parse=text(strip=True)),
    Option("frequency", OP, "when to run, in cron syntax (minute hour day-of-month month day-of-week)",
           parse=cron(), type="cron", default="run once and exit"),
    Option("query", PUSH,
           "the SQL query whose rows are pushed; code configs: or a function `sourceQuery(db)`",
           alias="sourceQuery", also=("source_query",), type="SQL", default="required (code: or `source`)"),
    Option("source", PUSH, "a function `source(http)` or `source()` returning the rows", type="function",
           yaml=False),
    Option("primary_column", PUSH, "the column that tells whether a row is already on Fliplet; without it "
           "every run appends every row", alias="primaryColumnName", parse=text()),
    Option("case_insensitive_primary_column", PUSH, "compare the primary column case-insensitively",
           alias="caseInsensitivePrimaryColumn", parse=flag(), type="true/false", default="false"),
    Option("timestamp_column", PUSH, "a row whose timestamp equals the one on Fliplet is left alone",
           alias="timestampColumnName", parse=text()),
    Option("delete_column", PUSH, "a row whose value here is not empty is deleted from Fliplet",
           alias="deleteColumnName", parse=text()),
    Option("mode", PUSH, "`update` keeps entries the query no longer returns, `replace` deletes them",
           parse=choice(MODES), type=" \\| ".join(MODES), default="update"),
    Option("batch_size", PUSH, "rows per commit", alias="batchSize", parse=whole(), type="whole number",
           default="1000"),
    Option("concurrency", PUSH, "how many batches and files are sent at once", parse=whole(),
           type="whole number", default="1"),
    Option("run_hooks", PUSH, "post-sync hooks Fliplet runs on the data it receives", alias="runHooks",
           parse=strings(choices=HOOKS), type="list of " + ", ".join(HOOKS)),
    Option("merge", PUSH,
           "updates merge the local columns into the remote ones (keeping remote-only columns)",
           parse=flag(), type="true/false", default="false"),
    Option("files", PUSH,
           "columns naming files to upload: a list of the `files` items below. See [Files](#files)",
           type="list"),
    Option("encrypt", PUSH, "columns to encrypt: the `encrypt` table below. See [Encryption](#encryption)",
           type="mapping"),
    Option("on_sync", PUSH, "a function `onSync(result)` called after each run", alias="onSync",
           type="function", yaml=False),
    Option("delete_limit", PUSH, "the most entries one run may delete: a count (`500`), a percentage of the "
           "data source (`\"10%\"`) or `none`. See [The delete guard](#the-delete-guard)",
           alias="deleteLimit", parse=delete_limit(), type="count, % or none", default="the delete guard"),
    Option("incremental", PUSH, "read only the rows whose `timestamp_column` is after the highest one the "
           "last successful run committed (the watermark), and look up only their keys on Fliplet. Update "
           "mode with a `primary_column` and a `timestamp_column` only. See [Incremental reads](#incremental-reads)",
           parse=flag(), type="true/false", default="false"),
    Option("full_refresh", PUSH, "with `incremental`: when a run compares everything instead (which also sees "
           "deletions and rows changed without a newer timestamp): a cron (`0 3 * * 0`) or an interval (`24h`, "
           "`7d`) since the last full run", alias="fullRefresh", parse=full_refresh(), type="cron or interval",
           default="never (only `start --full`)"),
    Option("where", PULL, "the filter sent to Fliplet (its query operators, e.g. `$gt`)", parse=mapping(),
           type="mapping"),
    Option("attributes", PULL, "the columns to fetch", parse=strings(), type="list", default="all"),
    Option("join", PULL, "a join sent to Fliplet's query as written", parse=mapping(), type="mapping"),
    Option("distinct", PULL, "ask Fliplet for distinct entries", parse=flag(), type="true/false"),
    Option("action", PULL, "a function `action(entries, db)` or `action(entries)` given the entries",
           type="function", yaml=False),
    # --- files[] items and encrypt (same spellings in both formats) ---------------------------------
    Option("column", ("files",), "the column holding the file's URL or path", default="required"),
    Option("type", ("files",), "where the file is", type=" \\| ".join(FILE_TYPES), default="required"),
    Option("directory", ("files",), "local: the folder relative paths start from"),
    Option("headers", ("files",), "remote: HTTP headers sent with the download", secret=True, type="mapping"),
    Option("username", ("files",), "sharepoint: the user (required)"),
    Option("password", ("files",), "sharepoint: the password (required)", secret=True),
    Option("file_type", ("files",), "sharepoint: `inherit` keeps the file's own name", alias="fileType"),
    Option("fields", ("encrypt",), "the columns to encrypt (not the primary column)", type="list",
           default="required"),
    Option("key", ("encrypt",), "your own key; without it the organization's keystore provides one",
           secret=True),
    Option("salt", ("encrypt",), "protects the key Fliplet manages (not with `key`)", secret=True,
           default="generated"),
)


def options_in(where: tuple[Where, ...], fmt: Format | None = None) -> tuple[Option, ...]:
    """The options allowed in one of ``where`` (in table order), in format ``fmt`` when given."""
    return tuple(
        o for o in OPTIONS
        if any(w in o.where for w in where) and (fmt is None or (o.yaml if fmt == "yaml" else o.code))
    )


def _code_names(options: tuple[Option, ...]) -> Names:
    spellings = {o.name: o.code_names for o in options}
    return Names(spellings, frozenset(o.name for o in options if o.secret))


def _yaml_names(options: tuple[Option, ...]) -> Names:
    spellings = {o.yaml_key: (o.yaml_key,) for o in options}
    return Names(spellings, frozenset(o.yaml_key for o in options if o.secret))


#: A YAML config is one flat mapping: settings, ``database_*`` options and one operation's options.
YAML_TOP = _yaml_names(options_in(("settings", "database", "push", "pull"), "yaml"))
#: Every option a YAML config may set at its top level.
YAML_OPTIONS = tuple(YAML_TOP.spellings)
CODE_SETTINGS = _code_names(options_in(("settings",), "code"))
CODE_DATABASE = _code_names(options_in(("database",), "code"))
DIALECT_OPTIONS = _code_names(tuple(o for o in options_in(("database",), "code") if o.dialect))
CODE_OPERATION = _code_names(options_in(("push", "pull"), "code"))
#: Items of ``files`` and ``encrypt`` are spelled alike in both formats.
FILES = _code_names(options_in(("files",)))
ENCRYPT = _code_names(options_in(("encrypt",)))

#: Operation options that only mean something for one kind of operation (canonical names).
PUSH_ONLY = tuple(o.name for o in OPTIONS if o.where == ("push",))
PULL_ONLY = tuple(o.name for o in OPTIONS if o.where == ("pull",))
#: The database options that fill :class:`~.model.Database` (both formats), in reading order.
DATABASE_PARTS = tuple(o.name for o in options_in(("database",), "yaml"))
