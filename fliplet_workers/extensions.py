"""Per-run extensions of a push: file uploads and field encryption.

They hook into a run at two points: ``run.prepare`` rewrites each batch just before it is sent
(upload files, then encrypt fields; files first so that an encrypted file column holds the encrypted
Fliplet URL) and ``run.decode_remote`` turns remote data back into comparable plaintext for the diff.

:func:`attach` does everything that can fail for the whole operation *before* the plan is made and
anything is sent: it refuses to encrypt the primary key and resolves the encryption key (creating the
keystore and the key on a first run; a wrong salt fails here).

For the fleet, the same steps exist one by one: :func:`file_jobs` lists a batch's files,
:func:`upload_one` runs one of them (one Celery task each), :func:`apply_file_results` rewrites the
batch from the results, and :func:`encrypt_only` encrypts it, in the commit task.

Change detection: the diff ignores file columns and ``<column>MediaFileId`` (``run.diff_options``),
since the remote holds the Fliplet URL where the source holds a location, and decrypts encrypted
fields with the known key (:func:`fliplet_workers.encryption.decoder`). So a re-run with unchanged rows
plans nothing, uploads nothing and sends nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fliplet_workers import encryption
from fliplet_workers.core.batches import Batch
from fliplet_workers.files import (
    FileJob,
    FileResult,
    apply_file_results,
    close_file_state,
    file_jobs,
    file_state,
    upload_all,
    upload_one,
)

if TYPE_CHECKING:
    from fliplet_workers.run import OperationRun

__all__ = [
    "FileJob",
    "FileResult",
    "apply_file_results",
    "attach",
    "detach",
    "encrypt_only",
    "file_errors",
    "file_jobs",
    "prepare",
    "upload_one",
]


def attach(run: OperationRun) -> None:
    """Set ``run.prepare`` and ``run.decode_remote`` for the operation's files and encryption.

    Raises :class:`~fliplet_workers.errors.EncryptionError` before anything is sent when the primary
    key is listed for encryption or the keystore's key does not decrypt with the salt.
    """
    op = run.op
    run.prepare = None
    run.decode_remote = None
    enc = op.encrypt
    if enc is not None:
        encryption.check_fields(op)
        run.log.info(f"[ENCRYPTION] Encryption is enabled for the following fields: {', '.join(enc.fields)}")
        key = encryption.key_for(run, create=True)
        if key is not None:
            run.decode_remote = encryption.decoder(enc.fields, key)
        else:
            run.log.info("[ENCRYPTION] Dry run: the organization has no encryption key yet. A real run creates "
                         "one in the keystore; the dump shows the encrypted fields as "
                         f"\"{encryption.PLACEHOLDER}\".")
    if op.files:
        columns = ", ".join(f.column for f in op.files)
        run.log.info(f"{len(op.files)} column(s) marked as files: {columns}.")
        if run.dry_run:
            run.log.info("[FILES] Dry run: files are neither read nor uploaded; the dump shows their locations.")
        file_state(run)
    if op.files or enc is not None:
        run.prepare = lambda batch: prepare(run, batch)


def prepare(run: OperationRun, batch: Batch) -> Batch:
    """Upload the batch's files (not in a dry run), then encrypt its fields. Returns a new batch."""
    if run.op.files and not run.dry_run:
        jobs = file_jobs(batch, run.op)
        if jobs:
            results = upload_all(run, jobs)
            batch = apply_file_results(batch, jobs, results, run.log)
            failed = [r.error or "" for r in results if not r.ok]
            if failed:
                state = file_state(run)
                with state.lock:
                    state.errors.extend(failed)
    return encrypt_only(run, batch)


def encrypt_only(run: OperationRun, batch: Batch) -> Batch:
    """The batch with the operation's ``encrypt.fields`` encrypted (unchanged without ``encrypt``).

    In a dry run without a key yet, the values are replaced by a placeholder instead. A run that was
    not attached resolves the key read-only from the keystore (see ``encryption.key_for``).
    """
    enc = run.op.encrypt
    if enc is None:
        return batch
    key = encryption.key_for(run)
    if key is None:
        return encryption.placeholder_batch(batch, enc.fields)
    return encryption.encrypt_batch(batch, enc.fields, key)


def file_errors(run: OperationRun) -> list[str]:
    """The reasons of the files that could not be read or uploaded in this run so far."""
    if not run.op.files:
        return []
    state = file_state(run)
    with state.lock:
        return list(state.errors)


def detach(run: OperationRun) -> None:
    """Release what :func:`attach` opened (the file downloads' HTTP session). Safe to call twice."""
    close_file_state(run)
