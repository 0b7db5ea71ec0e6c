"""The diff: decide, for each source row and remote entry, to insert, update, delete or skip.

Remote entries are indexed first (a hash map by normalised key: the whole diff is linear in
rows + entries; the original scans every entry for every row), then source rows are judged one at a
time as they stream in. Rows are never all held in memory, and a caller can start committing the
first batches while the source is still being read (see :mod:`.batches` and ``pipeline/plan.py``).

This module is the diff's front door; its parts live in modules named for their idea:
:mod:`.diff_options` (what it is run with), :mod:`.digests` (a 64-bit code per value),
:mod:`.remote_index` (the remote entries, compact), :mod:`.planner` (judging rows, the tally, a
whole plan) and :mod:`.columns` (checking the options that name a column).

The decisions are the original agent's (see ``shared/fliplet-api.md``), with deliberate improvements,
each documented in the README:

* keys keep their types exactly: ``0``, ``false`` and text of blanks are keys, ``true`` is not ``1``
  (see ``rows.normalise_key`` and ``rows.is_missing_key``); an object or list key is an error;
* an existing entry is updated only if its data differs from the row whenever no timestamp decides
  (no timestamp column, a timestamp that cannot be read), so a re-run with nothing changed sends no
  commit at all;
* a key held by more than one remote entry is healed in both modes: the oldest entry (lowest id) is
  kept and the others are deleted (a commit applied twice, an entry added twice by an app), so each
  key is there once; every deletion of a run is judged by the delete guard (:mod:`.guard`).
"""

from __future__ import annotations

from fliplet_workers.core.columns import ColumnCheck, check_columns
from fliplet_workers.core.diff_options import DiffOptions, Note
from fliplet_workers.core.planner import Change, Plan, Planner, Tally, diff, same_data
from fliplet_workers.core.remote_index import Duplicate, Remote, RemoteIndex, index_remote

__all__ = ["Change", "ColumnCheck", "DiffOptions", "Duplicate", "Note", "Plan", "Planner", "Remote", "RemoteIndex",
           "Tally", "check_columns", "diff", "index_remote", "same_data"]
