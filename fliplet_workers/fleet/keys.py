"""Every Redis key the fleet uses, in one place: reading this file is reading the key layout.

Config names are file names without their extension and never contain ``:`` (see
:mod:`~fliplet_workers.fleet.registry`), so the keys below cannot collide.

=========================================  ======  ====================================================
key                                        type    what it holds
=========================================  ======  ====================================================
``fleet:lock:<config>:<op>``               string  run id holding the operation (PX ttl, renewed)
``fleet:current:<config>:<op>``            string  run id of the operation's latest run (to the run ttl)
``fleet:beat:leader``                      string  id of the beat that may send (PX ttl, renewed)
``fleet:run:<id>``                         hash    run metadata: config, operation, started, batches,
                                                   plan counts, state, summary once finalized
``fleet:run:<id>:batch:<n>``               string  the staged batch, encrypted fields encrypted (orjson of
                                                   ``Batch.to_dict``: entries with their keys) and its file
                                                   jobs; deleted once the batch has an outcome
``fleet:run:<id>:batch:<n>:state``         hash    attempts, last_error, inflight, worker, outcome
``fleet:run:<id>:batch:<n>:lease``         string  worker committing the batch now (PX ttl, renewed)
``fleet:run:<id>:batch:<n>:file:<i>``      string  result of file upload job ``i`` of the batch
``fleet:run:<id>:done``                    set     batch numbers whose outcome is recorded
``fleet:last:<config>:<op>``               list    last run summaries, newest first (capped)
``fleet:active``                           hash    run id → config, operation, since: runs not ended
``fleet:run:<id>:planner``                 string  the planning task's heartbeat (PX ttl, renewed)
``fleet:run:<id>:sent``                    hash    batch number → when its task was last sent;
                                                   ``<n>:count`` → how often recovery re-sent it
``fleet:run:<id>:finalizing``              string  the finalize step writing the summary (PX ttl)
``fleet:run:<id>:resume``                  string  recovery sent a resumed planner (EX ttl)
``fleet:run:<id>:lost``                    string  the run was recorded as lost (once)
``fleet:recover``                          string  the recovery sweep running now (PX ttl)
``fleet:watermark:<config>:<op>``          string  an incremental operation's watermark (JSON, no ttl)
``fleet:run:<id>:watermark``               string  what the run would make the watermark, advanced by
                                                   finalize only when the run ended ok (EX ttl)
=========================================  ======  ====================================================

Everything under ``fleet:run:<id>`` expires (``FLIPLET_RUN_TTL``); a batch's rows are deleted as soon as it
has an outcome (finalize deletes any left).
"""

from __future__ import annotations

PREFIX = "fleet"
BEAT_LEADER = f"{PREFIX}:beat:leader"
ACTIVE = f"{PREFIX}:active"
RECOVER = f"{PREFIX}:recover"


def lock(config: str, operation: int) -> str:
    return f"{PREFIX}:lock:{config}:{operation}"


def current(config: str, operation: int) -> str:
    return f"{PREFIX}:current:{config}:{operation}"


def run(run_id: str) -> str:
    return f"{PREFIX}:run:{run_id}"


def batch(run_id: str, number: int) -> str:
    return f"{PREFIX}:run:{run_id}:batch:{number}"


def batch_state(run_id: str, number: int) -> str:
    return f"{batch(run_id, number)}:state"


def batch_lease(run_id: str, number: int) -> str:
    return f"{batch(run_id, number)}:lease"


def file_result(run_id: str, number: int, job: int) -> str:
    return f"{batch(run_id, number)}:file:{job}"


def done(run_id: str) -> str:
    return f"{PREFIX}:run:{run_id}:done"


def last(config: str, operation: int) -> str:
    return f"{PREFIX}:last:{config}:{operation}"


def planner(run_id: str) -> str:
    return f"{PREFIX}:run:{run_id}:planner"


def sent(run_id: str) -> str:
    return f"{PREFIX}:run:{run_id}:sent"


def finalizing(run_id: str) -> str:
    return f"{PREFIX}:run:{run_id}:finalizing"


def resume(run_id: str) -> str:
    return f"{PREFIX}:run:{run_id}:resume"


def lost(run_id: str) -> str:
    return f"{PREFIX}:run:{run_id}:lost"


def watermark(config: str, operation: int) -> str:
    return f"{PREFIX}:watermark:{config}:{operation}"


def run_watermark(run_id: str) -> str:
    return f"{PREFIX}:run:{run_id}:watermark"
