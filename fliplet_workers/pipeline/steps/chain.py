"""A run's batch steps, built once (:func:`open_steps`) and applied to each batch (:meth:`Steps.prepare`).

:func:`open_steps` does everything that can fail for the whole operation *before* the plan is made
and anything is sent: it refuses to encrypt the primary key and resolves the encryption key (creating
the keystore and the key on a first run; a wrong salt fails here).

Change detection: the diff ignores file columns and ``<column>MediaFileId`` (``RunSpec.diff_options``),
and decrypts encrypted fields with the known key (:meth:`Steps.decode_remote`). So a re-run with
unchanged rows plans nothing, uploads nothing and sends nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from fliplet_workers.core.batches import Batch
from fliplet_workers.pipeline.spec import DecodeRemote, Resources, RunSpec
from fliplet_workers.pipeline.steps.encryption import PLACEHOLDER, EncryptStep, check_fields, resolve_key
from fliplet_workers.pipeline.steps.files import FileStep


@dataclass(frozen=True)
class Steps:
    """The steps of one run; either may be absent. Close it when the run ends."""

    files: FileStep | None = None
    encrypt: EncryptStep | None = None
    #: Upload files in :meth:`prepare` (off in a dry run: the dump shows the files' locations).
    upload: bool = True

    @property
    def active(self) -> bool:
        return self.encrypt is not None or (self.files is not None and self.upload)

    def prepare(self, batch: Batch) -> Batch:
        """Upload the batch's files (not in a dry run), then encrypt its fields. Returns a new batch."""
        if self.files is not None and self.upload:
            batch = self.files.apply(batch)
        if self.encrypt is not None:
            batch = self.encrypt.apply(batch)
        return batch

    def decode_remote(self) -> DecodeRemote | None:
        return self.encrypt.decode_remote() if self.encrypt is not None else None

    @property
    def file_errors(self) -> list[str]:
        return self.files.errors if self.files is not None else []

    def close(self) -> None:
        if self.files is not None:
            self.files.close()


def open_steps(spec: RunSpec, res: Resources) -> Steps:
    """The operation's steps, checked and with their key. Raises
    :class:`~fliplet_workers.errors.EncryptionError` before anything is sent when the primary key is
    listed for encryption or the keystore's key does not decrypt with the salt."""
    op, log = spec.op, res.log
    encrypt = None
    if op.encrypt is not None:
        check_fields(op)
        log.info(f"[ENCRYPTION] Encryption is enabled for the following fields: {', '.join(op.encrypt.fields)}")
        key = resolve_key(op, res.api, create=not spec.dry_run, debug=log.debug, note=log.info)
        if key is None:
            log.info("[ENCRYPTION] Dry run: the organization has no encryption key yet. A real run creates "
                     "one in the keystore; the dump shows the encrypted fields as "
                     f"\"{PLACEHOLDER}\".")
        encrypt = EncryptStep(tuple(op.encrypt.fields), key)
    files = None
    if op.files:
        columns = ", ".join(f.column for f in op.files)
        log.info(f"{len(op.files)} column(s) marked as files: {columns}.")
        if spec.dry_run:
            log.info("[FILES] Dry run: files are neither read nor uploaded; the dump shows their locations.")
        files = file_step(spec, res)
    return Steps(files=files, encrypt=encrypt, upload=not spec.dry_run)


def file_step(spec: RunSpec, res: Resources) -> FileStep:
    """The file step of a run (the fleet's upload tasks build one each)."""
    config = spec.config
    return FileStep(spec.op, res.api, res.log, ca_bundle=config.ca_bundle, timeout=config.timeout,
                    retry_delay=config.retry_delay, dry_run=spec.dry_run)
