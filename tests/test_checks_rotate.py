"""Fernet rotation on a real Airflow database (migrated + seeded): every encrypted value stays readable."""

from __future__ import annotations

import io

import pytest
from cryptography.fernet import Fernet
from pg_fixture import SEEDED_SECRETS
from rich.console import Console

from airflow_gitops import fernetkeys
from airflow_gitops.checks import database
from airflow_gitops.errors import PlatformError
from airflow_gitops.keystore import write_private


def test_rotation_keeps_every_encrypted_value_readable(airflow_db, tmp_path):
    key_path = tmp_path / "secrets" / "fernet.key"
    write_private(key_path, airflow_db.fernet_key + "\n")
    out = io.StringIO()
    total = fernetkeys.rotate_keys(key_path, airflow_db.url, airflow_db.env, Console(file=out, width=200))
    assert total == 4
    new_key = key_path.read_text().strip()
    assert "," not in new_key and new_key != airflow_db.fernet_key  # old key dropped
    conn = database.connect(airflow_db.url)
    assert fernetkeys.undecryptable(conn, [new_key.encode()]) == (4, [])  # everything readable with the new key
    assert fernetkeys.undecryptable(conn, [airflow_db.fernet_key.encode()])[1]  # and really re-encrypted
    values = dict(
        (label, Fernet(new_key.encode()).decrypt(token.encode()).decode())
        for label, token in fernetkeys.encrypted_values(conn)
    )
    assert values["connection warehouse (password)"] == "conn-password-value"
    assert values["variable api_token"] == "variable-secret-value"
    printed = out.getvalue()
    assert "3/3" in printed and new_key not in printed and airflow_db.fernet_key not in printed
    assert not any(s in printed for s in SEEDED_SECRETS)


def test_rotation_refuses_when_values_are_already_unreadable(airflow_db, tmp_path):
    key_path = tmp_path / "fernet.key"
    wrong = Fernet.generate_key().decode()
    write_private(key_path, wrong + "\n")
    with pytest.raises(PlatformError) as err:
        fernetkeys.rotate_keys(key_path, airflow_db.url, airflow_db.env, Console(file=io.StringIO()))
    assert "cannot be decrypted" in err.value.problem and "put the key" in err.value.fix
    assert key_path.read_text().strip() == wrong  # nothing changed
