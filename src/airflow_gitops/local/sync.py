"""``sync`` (and the end of ``up``): make Airflow's Connections, Variables and pools match platform.yaml.

What is there is read from the metadata database (Connection passwords/extras and Variable values
decrypted with the platform's Fernet keys: the REST API shows them as ``***``, so only the database can
tell whether a secret changed); what has to change is written through the REST API, so Airflow itself
encrypts it with the platform's Fernet key. Idempotent: a second run finds nothing to do.

Ownership is the description's marker (:data:`..managed.MARKER`): declared names are created, updated
and marked; marked objects that platform.yaml no longer declares are deleted; everything else (made by
hand in the UI) is left alone. Output names objects and fields, never a value.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from rich.console import Console

from .. import managed
from ..errors import PlatformError
from ..managed import KINDS, SINGULAR, Declared

UNREADABLE = object()  # a stored value the key list cannot decrypt: differs from anything declared
BUILTIN = {"pools": {"default_pool"}}  # Airflow's own objects: neither managed nor hand-made


@dataclass
class Stored:
    """One object as Airflow stores it (``fields`` as :meth:`managed.Connection.fields` names them)."""

    name: str
    fields: dict[str, Any]

    @property
    def managed(self) -> bool:
        return managed.is_managed(self.fields.get("description"))


@dataclass(frozen=True)
class Change:
    kind: str
    name: str
    action: str  # create | update | adopt | delete
    fields: tuple[str, ...] = ()

    def line(self) -> str:
        what = f"{SINGULAR[self.kind]} {self.name}"
        if self.action == "create":
            return f"+ {what}"
        if self.action == "delete":
            return f"- {what} (no longer in platform.yaml)"
        changed = f": {', '.join(self.fields)}" if self.fields else ""
        if self.action == "adopt":
            return f"~ {what}{changed} (was made by hand; platform.yaml declares it, so it is managed from now on)"
        return f"~ {what}{changed}"


@dataclass
class Plan:
    changes: list[Change] = field(default_factory=list)
    managed: dict[str, list[str]] = field(default_factory=dict)  # kind -> declared names
    hand_made: dict[str, list[str]] = field(default_factory=dict)  # kind -> names left alone

    def summary(self) -> str:
        def n(count: int, what: str) -> str:
            return f"{count} {what}{'s' if count != 1 else ''}"

        managed_text = ", ".join(n(len(self.managed.get(k, [])), SINGULAR[k]) for k in KINDS)
        left = sum(len(v) for v in self.hand_made.values())
        tail = f"; {left} made by hand, left alone" if left else ""
        if not self.changes:
            return f"in sync with platform.yaml ({managed_text} managed{tail})"
        counts = {a: sum(1 for c in self.changes if c.action == a) for a in ("create", "update", "adopt", "delete")}
        labels = {"create": "created", "update": "updated", "adopt": "taken over", "delete": "deleted"}
        done = ", ".join(f"{counts[a]} {label}" for a, label in labels.items() if counts[a])
        return f"{done} ({managed_text} managed{tail})"

    def to_dict(self) -> dict:
        return {"changes": [asdict(c) for c in self.changes], "managed": self.managed, "hand_made": self.hand_made}


# --- reading what Airflow stores ---------------------------------------------------------------------
def _decrypt(fernet: MultiFernet | None, value: str | None, encrypted: bool) -> Any:
    if value is None or not encrypted:
        return value
    if fernet is None:
        return UNREADABLE
    try:
        return fernet.decrypt(value.encode()).decode()
    except (InvalidToken, ValueError, TypeError):
        return UNREADABLE


def _extra(value: Any) -> Any:
    """A stored extra as a mapping (None when empty); an unreadable or non-JSON one stays as it is."""
    if value is UNREADABLE:
        return value
    if not value:
        return None
    try:
        parsed = json.loads(value)
    except (TypeError, ValueError):
        return value
    return parsed or None


def read_stored(conn, keys: list[bytes] | None) -> dict[str, dict[str, Stored]]:
    """kind -> name -> :class:`Stored`, from Airflow's tables (``keys``: the Fernet key list; None reads
    names and descriptions only, decrypting nothing). A table not created yet reads as empty."""
    fernet = MultiFernet([Fernet(k) for k in keys]) if keys else None
    out: dict[str, dict[str, Stored]] = {k: {} for k in KINDS}
    with conn.cursor() as cur:
        cur.execute(
            "SELECT to_regclass('public.connection') IS NOT NULL, to_regclass('public.variable') IS NOT NULL, "
            "to_regclass('public.slot_pool') IS NOT NULL"
        )
        has_conn, has_var, has_pool = cur.fetchone()
        if has_conn:
            cur.execute(
                "SELECT conn_id, conn_type, description, host, schema, login, password, port, is_encrypted, "
                "extra, is_extra_encrypted FROM connection"
            )
            for cid, ctype, desc, host, schema, login, password, port, enc, extra, extra_enc in cur.fetchall():
                out["connections"][cid] = Stored(
                    cid,
                    {
                        "conn_type": ctype,
                        "description": desc,
                        "host": host,
                        "login": login,
                        "password": _decrypt(fernet, password, enc) if keys is not None else None,
                        "schema": schema,
                        "port": port,
                        "extra": _extra(_decrypt(fernet, extra, extra_enc)) if keys is not None else None,
                    },
                )
        if has_var:
            cur.execute('SELECT "key", val, description, is_encrypted FROM variable')
            for key, val, desc, enc in cur.fetchall():
                value = _decrypt(fernet, val, enc) if keys is not None else None
                out["variables"][key] = Stored(key, {"value": value, "description": desc})
        if has_pool:
            cur.execute("SELECT pool, slots, description, include_deferred FROM slot_pool")
            for name, slots, desc, deferred in cur.fetchall():
                if name not in BUILTIN["pools"]:
                    out["pools"][name] = Stored(
                        name, {"slots": slots, "description": desc, "include_deferred": bool(deferred)}
                    )
    return out


# --- what has to change --------------------------------------------------------------------------------
def plan(declared: Declared, stored: dict[str, dict[str, Stored]]) -> Plan:
    """What makes ``stored`` match ``declared``: never touches an unmarked object platform.yaml does not name."""
    out = Plan()
    for kind in KINDS:
        want = declared.of(kind)
        have = stored.get(kind, {})
        out.managed[kind] = sorted(want)
        out.hand_made[kind] = sorted(n for n, s in have.items() if not s.managed and n not in want)
        for name, item in sorted(want.items()):
            current = have.get(name)
            if current is None:
                out.changes.append(Change(kind, name, "create"))
                continue
            wanted = item.fields()
            differs = tuple(k for k, v in wanted.items() if current.fields.get(k) != v)
            if not current.managed:
                out.changes.append(Change(kind, name, "adopt", differs))
            elif differs:
                out.changes.append(Change(kind, name, "update", differs))
        for name, current in sorted(have.items()):
            if current.managed and name not in want:
                out.changes.append(Change(kind, name, "delete"))
    return out


def counts(stored: dict[str, dict[str, Stored]]) -> dict[str, dict[str, int]]:
    """kind -> {"managed": n, "hand_made": m} (Airflow's built-in default_pool is neither)."""
    return {
        kind: {
            "managed": sum(1 for s in stored[kind].values() if s.managed),
            "hand_made": sum(1 for s in stored[kind].values() if not s.managed),
        }
        for kind in KINDS
    }


# --- applying -------------------------------------------------------------------------------------------
def apply(client, declared: Declared, changes: list[Change]) -> None:
    """Carry out ``changes`` through the REST API (deletions last: a rename never leaves a gap)."""
    for change in sorted(changes, key=lambda c: c.action == "delete"):
        try:
            if change.action == "delete":
                client.delete(change.kind, change.name)
                continue
            body = declared.of(change.kind)[change.name].api_body()
            if change.action == "create":
                client.create(change.kind, body)
            else:
                client.update(change.kind, change.name, body)
        except PlatformError as err:
            raise PlatformError(
                f"could not {change.action} {SINGULAR[change.kind]} {change.name}: {err.problem}",
                "correct it in platform.yaml (or read the api-server log: `airflow-gitops logs api-server`), then "
                "`airflow-gitops sync`",
            ) from None


def print_plan(result: Plan, console: Console, *, dry_run: bool = False) -> None:
    head = "Connections, Variables, pools"
    if not result.changes:
        console.print(f"{head}: {result.summary()}", highlight=False, soft_wrap=True)
        return
    console.print(f"{head}{' (dry run: nothing applied)' if dry_run else ''}:", highlight=False)
    for change in result.changes:
        console.print(f"  {change.line()}", highlight=False, markup=False, soft_wrap=True)
    console.print(f"  {'would be: ' if dry_run else ''}{result.summary()}", highlight=False, soft_wrap=True)
