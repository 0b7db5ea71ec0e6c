"""The original agent's YAML config format: one file, one operation.

Every option of the original is accepted under its original name (see ``configs/examples/users.yml``
for all of them, documented), plus a few of ours; which ones is the option table's answer
(:data:`~.options.YAML_TOP`: the options whose ``yaml`` is true, database ones prefixed ``database_``).

The file is composed into a YAML node tree with ``SafeLoader`` (so every key's line is known) and
converted to plain values by hand: keys are always the text written, and the source text of every
scalar is kept so that string options keep what was written (``database_password: 0123`` is
"0123", not 83). ``${NAME}`` / ``${NAME:-default}`` are substituted in string values afterwards, so
an environment variable can never inject YAML structure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from fliplet_workers.config.connection import read_database
from fliplet_workers.config.model import Config
from fliplet_workers.config.operations import read_operation, read_settings
from fliplet_workers.config.options import DATABASE_PARTS, YAML_OPTIONS, YAML_TOP
from fliplet_workers.config.problems import (
    Key,
    Report,
    display_path,
    fail_if_problems,
    read_text,
    shown,
    substitute_env,
)
from fliplet_workers.config.section import Section

__all__ = ["YAML_OPTIONS", "load_yaml_config"]

#: The YAML names of the database options: any of them given means a database is meant.
DATABASE = tuple(f"database_{part}" for part in DATABASE_PARTS)

_TYPED_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("int", "float", "bool", "null")}
_MAX_NODES = 100_000  # a config is small; this stops "billion laughs" alias bombs


def load_yaml_config(path: Path) -> Config:
    """Read, validate and convert a YAML config. Raises ``ConfigError`` with every problem found."""
    report = Report(label=path.name, base_dir=path.resolve().parent)
    text = read_text(path, report)
    fail_if_problems(path, report)
    assert text is not None
    data = parse_yaml(text, report)
    if data is None:
        fail_if_problems(path, report)  # a syntax error: nothing more to say
        report.add("the file is empty; expected options such as 'auth_token: ...'")
    elif not isinstance(data, dict):
        report.add(f"the file must be a mapping of options such as 'auth_token: ...', got {shown(data)}")
    if not isinstance(data, dict):
        fail_if_problems(path, report)
    assert isinstance(data, dict)
    data = substitute_env(data, (), report)

    sec = Section(report, data, (), YAML_TOP)
    settings = read_settings(sec, "yaml")
    database = read_database(sec, "database_")
    has_database = any(sec.given(name) for name in DATABASE)
    kind = sec.choice("type", ("push", "pull"))
    if kind is None and sec.has("type"):  # wrong (reported): guess from the options to say more
        kind = "pull" if sec.given("where") or sec.given("attributes") else "push"
    kind = kind or "push"  # the original's default
    operation = read_operation(sec, kind, has_database=has_database)
    fail_if_problems(path, report)
    assert operation is not None
    return Config(
        name=path.stem,
        path=str(path.resolve()),
        operations=(operation,),
        database=database,
        **settings,
    )


def parse_yaml(text: str, report: Report) -> Any:
    """Plain values from YAML text, recording each key's line (and scalars' source text) in
    ``report``. A syntax error becomes one problem with its line and column."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        return _Converter(loader, report).convert(node, ())
    except yaml.MarkedYAMLError as exc:
        # Only the description: str(exc) would quote the offending line, which may hold a secret.
        mark = exc.problem_mark or exc.context_mark
        what = "; ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML"
        if mark is not None:
            report.problems.append(
                f"{report.label}:{mark.line + 1}: YAML syntax error at column {mark.column + 1}: {what}"
            )
        else:
            report.add(f"YAML syntax error: {what}")
    except _TooLarge as exc:
        report.add(str(exc))
    except yaml.YAMLError as exc:
        report.add(f"YAML syntax error: {type(exc).__name__}")
    finally:
        loader.dispose()
    return None


class _Converter:
    def __init__(self, loader: yaml.SafeLoader, report: Report) -> None:
        self.loader = loader
        self.report = report
        self.count = 0

    def convert(self, node: yaml.Node, at: Key, parents: frozenset[int] = frozenset()) -> Any:
        self.count += 1
        if self.count > _MAX_NODES:
            raise _TooLarge()
        if id(node) in parents:
            self.report.add(f"option '{display_path(at)}' refers to itself through a YAML alias", at)
            return None
        inner = parents | {id(node)}
        if isinstance(node, yaml.MappingNode):
            written = {id(key_node) for key_node, _ in node.value}
            self.loader.flatten_mapping(node)  # applies "<<: *defaults" merges (written keys win)
            out: dict[str, Any] = {}
            first_line: dict[str, int] = {}
            for key_node, value_node in node.value:
                line = key_node.start_mark.line + 1
                if not isinstance(key_node, yaml.ScalarNode):
                    self.report.problems.append(
                        f"{self.report.label}:{line}: a key must be a plain name, not a list or mapping"
                    )
                    continue
                key = key_node.value
                path = (*at, key)
                self.report.lines[path] = line
                if id(key_node) in written:
                    if key in first_line:
                        self.report.add(
                            f"option '{display_path(path)}' is given twice (first on line {first_line[key]})",
                            path,
                        )
                    first_line.setdefault(key, line)
                out[key] = self.convert(value_node, path, inner)
            return out
        if isinstance(node, yaml.SequenceNode):
            items = []
            for index, child in enumerate(node.value):
                self.report.lines[(*at, index)] = child.start_mark.line + 1
                items.append(self.convert(child, (*at, index), inner))
            return items
        assert isinstance(node, yaml.ScalarNode)
        self.report.raw[at] = node.value
        if node.tag in _TYPED_TAGS:
            return self.loader.construct_object(node, deep=True)
        return node.value  # strings; dates and other tags stay as written


class _TooLarge(yaml.YAMLError):
    def __str__(self) -> str:
        return "the document expands to too many values (YAML aliases nested too deep?)"
