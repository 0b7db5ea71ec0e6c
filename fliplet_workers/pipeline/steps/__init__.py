"""The batch steps of a push, run on each batch just before it is sent: files, then encryption.

Files first, so that an encrypted file column holds the encrypted Fliplet URL. Each step is an
object built once per run from the run's spec (:func:`.chain.open_steps`), holding its own state
(the file step's folder, session and errors; the encryption step's key): nothing is kept on a shared
run object or behind a process-wide lock.
"""
