"""The ``connections``, ``variables`` and ``pools`` of ``platform.yaml``: ids Airflow can read as
environment variables, and secret values by reference only (``${VAR}`` or ``{from_file: PATH}``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, field_validator

from .. import dburl, providers
from .base import _Model, _printable, _short

# --- Connections, Variables, pools ---------------------------------------------------------------------
# Names become AIRFLOW_CONN_<NAME> / AIRFLOW_VAR_<NAME> (upper-cased) on Kubernetes and REST API paths
# locally: letters, digits and '_', starting with a letter.
_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,199}")
_SECRET_SECTIONS = ("connections", "variables")  # errors there never echo a value
MAX_SECRET_FILE_BYTES = 256 * 1024


def _identifier(what: str):
    def check(v: str) -> str:
        if not _IDENTIFIER.fullmatch(v):
            raise ValueError(
                f"{_short(v)} is not a valid {what}; use letters, digits and '_', starting with a letter "
                "(at most 200 characters), e.g. 'warehouse'"
            )
        return v

    return check


def _refs_well_formed(v: str) -> str:
    """Every '${' starts a ``${NAME}`` reference (resolved from the environment when applying)."""
    if "${" in v and v.count("${") != len(dburl.references(v)):
        raise ValueError(
            "'${' must start an environment variable reference ${NAME} (letters, digits, '_'), read when the "
            "platform is applied"
        )
    return v


class FromFile(_Model):
    """``{from_file: PATH}``: a value read from a file (relative to platform.yaml) when the platform is
    applied, never when platform.yaml is read. The file must be ours and not a symbolic link."""

    from_file: Path

    @field_validator("from_file")
    @classmethod
    def _path(cls, v: Path) -> Path:
        if not str(v) or str(v) == ".":
            raise ValueError("from_file is empty; name the file holding the value, e.g. 'secrets/api_token'")
        _printable(str(v), "the path")
        return v


def _from_file(v: dict) -> FromFile:
    if set(v) != {"from_file"} or not isinstance(v["from_file"], str):
        raise ValueError(
            "a mapping here must be exactly {from_file: PATH} (a file read when the platform is applied); "
            "write other values as text"
        )
    return FromFile(from_file=Path(v["from_file"]))


def _inline_secret(hint: str) -> ValueError:
    return ValueError(
        "is a secret given inline; platform.yaml is committed, so secrets go in by reference only: write "
        f"'${{{hint}}}' (an environment variable, read when the platform is applied) or "
        "{from_file: PATH} (a file next to platform.yaml, kept out of Git)"
    )


_HINT = "NAME_OF_THE_SECRET"  # replaced by a name derived from the key path (see _problems)


def _env_hint(path: tuple[Any, ...]) -> str:
    """connections.warehouse.password -> WAREHOUSE_PASSWORD: the variable name an error suggests."""
    parts = [str(p) for p in path[1:] if str(p) != "extra"]
    return re.sub(r"[^A-Za-z0-9_]+", "_", "_".join(parts)).strip("_").upper()[:60] or "SECRET"


def _secret_ref(v: Any) -> str | FromFile | None:
    """A secret field: None, exactly ``${NAME}``, or ``{from_file: PATH}``. Never echoes the value."""
    if v is None or v == "":
        return None
    if isinstance(v, FromFile):
        return v
    if isinstance(v, dict):
        return _from_file(v)
    if isinstance(v, str) and dburl.VAR_REF.fullmatch(v):
        return v
    raise _inline_secret(_HINT)


def _json_value(v: Any, depth: int = 0) -> Any:
    """A JSON-like value (text, number, bool, null, list, mapping) in which ``{from_file: PATH}`` mappings
    become :class:`FromFile` and every '${' starts a reference."""
    if depth > 8:
        raise ValueError("nested more than 8 levels deep; flatten it")
    if isinstance(v, FromFile) or v is None or isinstance(v, bool | int | float):
        return v
    if isinstance(v, str):
        return _refs_well_formed(v)
    if isinstance(v, list):
        return [_json_value(x, depth + 1) for x in v]
    if isinstance(v, dict):
        if "from_file" in v:
            return _from_file(v)
        bad = [k for k in v if not isinstance(k, str)]
        if bad:
            raise ValueError("keys must be text; quote them")
        return {k: _json_value(x, depth + 1) for k, x in v.items()}
    raise ValueError(f"must be text, a number, true/false, a list or a mapping (got a {type(v).__name__})")


JsonValue = Annotated[Any, BeforeValidator(_json_value)]


def _variable_value(v: Any) -> Any:
    if v is None:
        raise ValueError("has no value; give one (text, a number, JSON) or {from_file: PATH}")
    return _json_value(v)


class ConnectionSpec(_Model):
    """One Airflow Connection (the fields of Airflow's Connection; ``extra`` as a mapping)."""

    conn_type: str
    description: str | None = None
    host: str | None = None
    login: str | None = None
    # Secret: '${VAR}' or {from_file: PATH}, never inline.
    password: Annotated[str | FromFile | None, BeforeValidator(_secret_ref)] = None
    schema_: str | None = Field(default=None, alias="schema")
    port: int | None = Field(default=None, ge=1, le=65535)
    # Keys that name a secret (token, secret, password, *_key ...) take '${VAR}' or {from_file: PATH}.
    extra: dict[str, JsonValue] = Field(default_factory=dict)

    @field_validator("conn_type")
    @classmethod
    def _conn_type(cls, v: str) -> str:
        if not providers.providers_found() or v in providers.connection_types():
            return v
        near = providers.closest(v)
        hint = f"did you mean {' or '.join(repr(n) for n in near)}? " if near else ""
        known = ", ".join(sorted(providers.connection_types()))
        raise ValueError(
            f"{_short(v)} is not a connection type of the installed Airflow providers; {hint}"
            f"known: {known if len(known) <= 300 else known[:297] + '...'}; for another type install its provider "
            "package (apache-airflow-providers-...) in this environment and in image.extra_requirements"
        )

    @field_validator("host", "login", "schema_", "description")
    @classmethod
    def _text(cls, v: str | None) -> str | None:
        return v if v is None else _refs_well_formed(v)

    @field_validator("host")
    @classmethod
    def _host(cls, v: str | None) -> str | None:
        if v is not None and re.search(r"://[^/@\s]*:[^/@\s]*@", dburl.VAR_REF.sub("x", v)):
            raise ValueError(
                "carries a password in the URL (user:password@); put the password in 'password' as '${VAR}' or "
                "{from_file: PATH} and leave it out of host"
            )
        return v

    @property
    def schema(self) -> str | None:  # type: ignore[override] - Airflow's name for the field
        return self.schema_


class PoolSpec(_Model):
    """One Airflow pool."""

    # -1: unlimited (Airflow's convention).
    slots: int = Field(ge=-1, le=1_000_000)
    description: str = ""
    include_deferred: bool = False


ConnId = Annotated[str, AfterValidator(_identifier("connection id"))]
VariableKey = Annotated[str, AfterValidator(_identifier("variable key"))]
PoolName = Annotated[str, AfterValidator(_identifier("pool name"))]
