"""Reading ``platform.yaml`` safely: bounded size, depth, aliases and nodes, no duplicate keys, no
following a link to a file not ours; then :func:`~airflow_gitops.spec.checks.parse_spec`."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from .base import DEFAULT_SPEC_FILE, SHORT, SpecError, _short
from .checks import parse_spec
from .models import PlatformSpec

# Bounds on the file (a real platform.yaml is a few KiB, a few levels deep, with no or few aliases).
MAX_SPEC_BYTES = 1 << 20
MAX_ALIASES = 100
MAX_NODES = 10_000  # values in the document once every alias is expanded
MAX_DEPTH = 32


class _Problem(yaml.YAMLError):
    """A problem met while reading the YAML: ``where`` (key path or line) and the message."""

    def __init__(self, where: str, message: str):
        super().__init__(message)
        self.where = where
        self.message = message


class _SpecLoader(yaml.SafeLoader):
    """``yaml.safe_load`` semantics, plus: duplicate keys are errors, and the document is bounded (aliases,
    values once aliases are expanded, nesting depth) so a hostile file fails at once instead of hanging."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._key_path: list[str] = []
        self._aliases = 0
        self._count = 0
        self._sizes: dict[int, int] = {}  # node id -> values in it, aliases expanded
        self._paths: dict[int, str] = {}  # node id -> its key path

    def _here(self) -> str:
        here = ".".join(self._key_path) or "(top level)"
        return here if len(here) <= 2 * SHORT else "..." + here[-2 * SHORT :]

    def compose_node(self, parent, index):  # noqa: ANN001, ANN201 - PyYAML's signature
        if isinstance(index, yaml.ScalarNode):
            segment: str | None = index.value if len(index.value) <= SHORT else index.value[: SHORT - 3] + "..."
        elif isinstance(index, int):
            segment = str(index)
        elif parent is not None:
            segment = "(a key)"
        else:
            segment = None
        if segment is not None:
            self._key_path.append(segment)
        try:
            event = self.peek_event()
            line = f"line {event.start_mark.line + 1}"
            if len(self._key_path) > MAX_DEPTH:
                raise _Problem(self._here(), f"nested more than {MAX_DEPTH} levels deep ({line}); flatten it")
            self._count += 1
            if self._count > MAX_NODES:
                raise _Problem(self._here(), f"the file holds more than {MAX_NODES:,} values ({line}); shorten it")
            is_alias = isinstance(event, yaml.AliasEvent)
            if is_alias:
                self._aliases += 1
                if self._aliases > MAX_ALIASES:
                    raise _Problem(
                        self._here(), f"more than {MAX_ALIASES} aliases (*name) ({line}); write the values out"
                    )
            node = super().compose_node(parent, index)
            size = self._sizes.get(id(node))
            if size is None:
                if is_alias:
                    raise _Problem(
                        self._here(),
                        f"the alias *{event.anchor[:SHORT]} refers to a value containing it ({line}); remove the cycle",
                    )
                if isinstance(node, yaml.SequenceNode):
                    children = node.value
                elif isinstance(node, yaml.MappingNode):
                    children = [n for pair in node.value for n in pair]
                else:
                    children = []
                size = 1 + sum(self._sizes[id(c)] for c in children)
                self._sizes[id(node)] = size
                self._paths[id(node)] = self._here()
            if size > MAX_NODES:
                raise _Problem(
                    self._here(),
                    f"expands to more than {MAX_NODES:,} values through YAML aliases ({line}); write the values out",
                )
            return node
        finally:
            if segment is not None:
                self._key_path.pop()

    def construct_mapping(self, node, deep=False):  # noqa: ANN001, ANN201
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if first is not None:
                    parent = self._paths.get(id(node), "(top level)")
                    name = str(key) if len(str(key)) <= SHORT else str(key)[: SHORT - 3] + "..."
                    raise _Problem(
                        name if parent == "(top level)" else f"{parent}.{name}",
                        f"duplicate key (lines {first} and {line}); YAML would silently keep the last one: "
                        "delete one of them",
                    )
                seen[key] = line
        return super().construct_mapping(node, deep)

    def construct_object(self, node, deep=False):  # noqa: ANN001, ANN201
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as err:  # e.g. a 5,000-digit number, the date 2024-13-45
            value = node.value if isinstance(node, yaml.ScalarNode) else node.tag
            raise _Problem(
                self._paths.get(id(node), "(top level)"),
                f"{_short(value)} cannot be read ({_short(str(err))}, line {node.start_mark.line + 1}); "
                "quote it to make it text, or correct it",
            ) from None

    def construct_undefined(self, node):  # noqa: ANN001, ANN201
        raise _Problem(
            self._paths.get(id(node), "(top level)"),
            f"the tag {_short(node.tag)} is not allowed (line {node.start_mark.line + 1}); platform.yaml holds "
            "plain values: remove the tag",
        )


_SpecLoader.add_constructor(None, _SpecLoader.construct_undefined)


def _read(path: Path) -> str:
    """The file's text: a regular, readable, UTF-8 file of at most MAX_SPEC_BYTES (checked before reading)."""

    def fail(message: str) -> SpecError:
        return SpecError(str(path), [("(file)", message)])

    try:
        # O_NONBLOCK: opening a named pipe must not wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except (FileNotFoundError, NotADirectoryError):
        raise fail("not found; create it with `airflow-gitops init`") from None
    except PermissionError:
        raise fail(f"cannot be read (permission denied); make it readable: chmod u+r {path}") from None
    except OSError as err:
        raise fail(f"cannot be opened ({err.strerror}); point -f at a platform.yaml file") from None
    too_big = fail(f"is larger than {MAX_SPEC_BYTES // 1024} KiB (a platform.yaml is a few KiB); is -f the right file?")
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise fail(f"is a folder, not a file; point -f at the file: -f {path / DEFAULT_SPEC_FILE}")
        if not stat.S_ISREG(info.st_mode):
            raise fail("is not a regular file (a pipe or a device?); point -f at a platform.yaml file")
        if info.st_size > MAX_SPEC_BYTES:  # before reading any of it
            raise too_big
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_SPEC_BYTES + 1)
    except OSError as err:
        raise fail(f"cannot be read ({err.strerror}); point -f at a platform.yaml file") from None
    finally:
        os.close(fd)
    if len(data) > MAX_SPEC_BYTES:
        raise too_big
    try:
        if b"\0" in data:
            raise UnicodeError
        return data.decode("utf-8-sig")
    except UnicodeError:
        raise fail("is not UTF-8 text (binary, or UTF-16?); save it as UTF-8") from None


def load_spec(path: Path | str | None = None) -> PlatformSpec:
    """Read ``platform.yaml`` (or the embedded defaults when ``path`` is None and no file exists)."""
    if path is None:
        candidate = Path.cwd() / DEFAULT_SPEC_FILE
        if not (candidate.exists() or candidate.is_symlink()):
            return parse_spec({}, source="(embedded defaults)", base_dir=Path.cwd())
        path = candidate
    path = Path(path)
    text = _read(path)
    loader = None
    try:
        loader = _SpecLoader(text)  # the reader refuses control characters here
        data = loader.get_single_data()
    except yaml.reader.ReaderError as err:
        line = text[: err.position].count("\n") + 1
        raise SpecError(
            str(path), [(f"line {line}", f"contains the control character #x{err.character:04x}; remove it")]
        ) from None
    except _Problem as err:
        raise SpecError(str(path), [(err.where, err.message)]) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        problem = ", ".join(filter(None, (getattr(err, "context", None), getattr(err, "problem", None)))) or str(err)
        message = f"not valid YAML: {_short(problem)[1:-1]}"
        lines = text.splitlines()
        if mark and mark.line < len(lines) and "${" in lines[mark.line]:
            # Inside {...} or [...], the braces of an unquoted ${NAME} end the mapping early.
            message += "; quote a ${NAME} reference written inside {...} or [...], e.g. password: '${DB_PASSWORD}'"
        raise SpecError(str(path), [(where, message)]) from None
    except RecursionError:
        raise SpecError(str(path), [("(file)", "nested too deeply; flatten it")]) from None
    finally:
        if loader is not None:
            loader.dispose()
    return parse_spec(data, source=str(path), base_dir=path.resolve().parent)
