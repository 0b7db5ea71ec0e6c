"""A Python code config: the equivalent of the original Fliplet Agent's JavaScript "advanced mode".

Run it with ``fliplet-agent start configs/examples/code_config.py --test`` (a dry run).

The file defines ``config`` (the settings) and ``setup(agent)``, which adds operations with
``agent.push({...})`` and ``agent.pull({...})``. Keys may use the original's camelCase names (as
below) or the YAML format's snake_case names (``auth_token``, ``primary_column``...). Unknown or
misspelled keys are reported with the line they are on, before anything runs.

Secrets: read them from the environment, never write them here. They never appear in logs.
"""

import os
import time

config = {
    # Fliplet authorization token from Fliplet Studio (required).
    "authToken": os.environ.get("FLIPLET_TOKEN", "eu--123456789"),
    # Set to True to test the integration without sending any data to Fliplet servers
    # (the --test command line option does the same).
    "isDryRun": False,
    # If True (the default in code configs), operations also run when the agent starts;
    # otherwise only according to their frequency.
    "syncOnInit": True,
    # The log verbosity: "debug", "info" or "critical".
    "logVerbosity": "debug",
    # The batch size in which records are processed (default 1000), for every push below
    # unless the operation sets its own "batchSize".
    "batchSize": 1000,
    # Database connection settings (the original's Sequelize format). Leave "database" out when
    # every operation uses "source" or is a pull that doesn't need it.
    "database": {
        "dialect": "postgres",  # mysql (or mariadb), sqlite, postgres, mssql
        "host": os.environ.get("DB_HOST", "localhost"),
        "username": "foo",
        "password": os.environ.get("DB_PASSWORD", ""),
        "port": 5432,
        "database": "myDatabaseName",  # for sqlite: the file, relative to this file's folder
        # Or a SQLAlchemy URL instead of the parts above:
        # "url": os.environ["DATABASE_URL"],
        # MSSQL Server only:
        # "dialectOptions": {"domain": "myDomain", "instanceName": "myInstance", "encrypt": False},
        # "dialectModulePath": "sequelize-odbc-mssql",  # use the native ODBC driver
    },
    # Ours: "baseURL" (API base URL), "caBundle" (extra CA certificates file), "retries",
    # "retryDelay" and "timeout" (seconds), as in the YAML format.
}


def load_todos(http):
    """Rows from a JSON API: ``http`` is a requests.Session (returning the response works too)."""
    response = http.get("https://jsonplaceholder.typicode.com/todos", timeout=30)
    response.raise_for_status()
    return response.json()


def recent_users(db):
    """Rows from the database with a parameterised query; ``db.query`` yields dict rows."""
    return db.query(
        'SELECT id, email AS "Email", "updatedAt" FROM users WHERE active = :active',
        {"active": True},
    )


def save_entries(entries, db):
    """A pull action: receives the data source entries (and the database, if any)."""
    for entry in entries:
        db.query(
            "INSERT INTO contacts (first_name, last_name) VALUES (:first, :last)",
            {"first": entry["data"].get("First name"), "last": entry["data"].get("Last name")},
        )


def setup(agent):
    # 1. Push the result of a SQL query (a string) to a data source.
    agent.push(
        {
            # Description of the operation (printed in the logs).
            "description": "Pushes my users to Fliplet",
            # Frequency in unix cron syntax: minute hour day-of-month month day-of-week.
            "frequency": "*/15 * * * *",
            # The query to fetch the rows: a SQL string, or a function sourceQuery(db).
            "sourceQuery": 'SELECT id, email, "updatedAt" FROM users ORDER BY id',
            # The column used to recognise a row already on Fliplet.
            "primaryColumnName": "id",
            # Whether the primary column is compared case-insensitively.
            "caseInsensitivePrimaryColumn": True,
            # A column telling when a row was last updated (optional).
            "timestampColumnName": "updatedAt",
            # "update" keeps remote entries missing locally, "replace" deletes them.
            "mode": "update",
            # A column flagging rows as deleted (optional).
            "deleteColumnName": "deletedAt",
            # The ID of the Fliplet Data Source (required).
            "targetDataSourceId": 123,
            # Post-sync hooks to run on Fliplet: "insert" and/or "update".
            "runHooks": [],
            # Merge local columns into the remote ones when updating.
            "merge": True,
            # Columns holding files to upload (remote URL, local path, Sharepoint URL).
            "files": [
                {"column": "thumbnail", "type": "remote"},
                # {"column": "resume", "type": "local", "directory": "/path/to/dir"},
                # {"column": "photo", "type": "sharepoint", "fileType": "inherit",
                #  "username": "me", "password": os.environ["SHAREPOINT_PASSWORD"]},
            ],
            # Encrypt these columns before sending (not the primary column). Without "key",
            # Fliplet keeps a generated key in the organization keystore.
            # "encrypt": {"fields": ["email"]},
            # How many rows and files are processed at once.
            "concurrency": 1,
            # Called after the sync. As in the original, result["commits"] is the list of entries
            # sent ({"id"?, "data"}: inserts have no "id"); result["summary"] has the counts and
            # result["responses"] the server's answers to the commit requests.
            "onSync": lambda result: print(f"{len(result['commits'])} entries sent, "
                                           f"{result['summary']['inserted']} inserted"),
        }
    )

    # 2. Push rows computed by a function using the database.
    agent.push(
        {
            "description": "Pushes active users",
            "frequency": "0 8 * * MON-FRI",
            "sourceQuery": recent_users,
            "primaryColumnName": "id",
            "targetDataSourceId": 124,
        }
    )

    # 3. Push rows from an API (no database needed), in snake_case.
    agent.push(
        description="Pushes todos from an API",
        frequency="0 */2 * * *",
        source=load_todos,
        primary_column="id",
        datasource_id=125,
        mode="replace",
    )

    # 4. Pull entries not synced yet, write them to the database, then mark each one as synced in
    #    Fliplet (agent.api calls back to Fliplet with this config's token, as the original's axios).
    def save_and_mark(entries, db):
        save_entries(entries, db)
        for entry in entries:
            agent.api.request(url=f"v1/data-sources/456/data/{entry['id']}", method="PUT",
                              data={"syncedAt": int(time.time() * 1000)})

    agent.pull(
        {
            "description": "Pulls new contacts",
            "frequency": "0 * * * *",
            "targetDataSourceId": 456,
            "where": {"syncedAt": ""},
            "attributes": ["First name", "Last name"],
            "action": save_and_mark,
        }
    )
