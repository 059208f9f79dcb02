"""SSH deploy key and known_hosts checks, against real key files (and a real sshd for the host key)."""

from __future__ import annotations

import subprocess

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sshd import write_ed25519

from airflow_gitops.checks import ssh
from airflow_gitops.spec import parse_spec


def _spec(tmp_path, key, known_hosts, repo="ssh://git@127.0.0.1:2222/org/dags.git"):
    return parse_spec(
        {"dags": {"repo": repo, "ssh_key_file": str(key), "known_hosts_file": str(known_hosts)}},
        base_dir=tmp_path,
    )


def _by_name(results):
    return {r.name: r for r in results}


def test_good_key_passes_and_fingerprint_matches_ssh_keygen(tmp_path):
    key = tmp_path / "id_ed25519"
    write_ed25519(key)
    rows = _by_name([ssh.check_key_permissions(key), *ssh.check_key(key)])
    assert all(r.status == "ok" for r in rows.values()), rows
    expected = subprocess.run(["ssh-keygen", "-lf", str(key)], capture_output=True, text=True).stdout.split()[1]
    assert rows["ssh.key.fingerprint"].saw.startswith(expected)
    assert "READ access only" in rows["ssh.key.fingerprint"].fix


def test_0644_key_fails_with_chmod_fix(tmp_path):
    key = tmp_path / "id_ed25519"
    write_ed25519(key)
    key.chmod(0o644)
    r = ssh.check_key_permissions(key)
    assert r.status == "fail" and "0644" in r.saw
    assert r.fix == f"chmod 600 {key}"


@pytest.mark.parametrize("fmt", ["pkcs8-pem", "openssh"])
def test_passphrase_key_fails_with_ssh_keygen_p_fix(tmp_path, fmt):
    key = tmp_path / "id_ed25519"
    if fmt == "pkcs8-pem":  # cryptography's BestAvailableEncryption (OpenSSH format would need bcrypt)
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret-passphrase"),
        )
        key.write_bytes(pem)
        key.chmod(0o600)
    else:
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "secret-passphrase", "-f", str(key)], check=True)
    rows = _by_name(ssh.check_key(key))
    assert rows["ssh.key.passphrase"].status == "fail"
    assert "ssh-keygen -p -N ''" in rows["ssh.key.passphrase"].fix
    assert "secret-passphrase" not in repr(rows)


def test_missing_trailing_newline_fails(tmp_path):
    key = tmp_path / "id_ed25519"
    write_ed25519(key)
    key.write_bytes(key.read_bytes().rstrip(b"\n"))
    rows = _by_name(ssh.check_key(key))
    assert rows["ssh.key.format"].status == "fail"
    assert "trailing newline" in rows["ssh.key.format"].saw and rows["ssh.key.format"].fix == f"echo >> {key}"


def test_public_key_given_instead_of_private_fails(tmp_path):
    key = tmp_path / "id_ed25519"
    write_ed25519(key)
    rows = _by_name(ssh.check_key(tmp_path / "id_ed25519.pub"))
    assert rows["ssh.key.format"].status == "fail" and "private half" in rows["ssh.key.format"].fix


def test_no_secret_material_in_results(tmp_path):
    key = tmp_path / "id_ed25519"
    write_ed25519(key)
    body = key.read_text().splitlines()[1]
    assert body not in repr(ssh.check_key(key))


def test_known_hosts_with_the_host_passes(tmp_path):
    key = tmp_path / "k"
    write_ed25519(key)
    kh = tmp_path / "known_hosts"
    host_pub = write_ed25519(tmp_path / "hostkey")
    kh.write_text(f"[127.0.0.1]:2222 {host_pub}\n")
    r = ssh.check_known_hosts(_spec(tmp_path, key, kh))
    assert r.status == "ok" and "[127.0.0.1]:2222" in r.saw


def test_known_hosts_without_the_host_fails_with_keyscan_fix(tmp_path):
    key = tmp_path / "k"
    write_ed25519(key)
    kh = tmp_path / "known_hosts"
    host_pub = write_ed25519(tmp_path / "hostkey")
    kh.write_text(f"github.com {host_pub}\n")  # another host, and the default port would not match either
    r = ssh.check_known_hosts(_spec(tmp_path, key, kh))
    assert r.status == "fail" and "no key for [127.0.0.1]:2222" in r.saw
    assert r.fix.startswith("ssh-keyscan -p 2222 127.0.0.1 >>")


def test_known_hosts_missing_file_fails(tmp_path):
    key = tmp_path / "k"
    write_ed25519(key)
    r = ssh.check_known_hosts(_spec(tmp_path, key, tmp_path / "nope"))
    assert r.status == "fail" and "ssh-keyscan" in r.fix


def test_not_ssh_repo_is_skipped(tmp_path):
    spec = parse_spec({}, base_dir=tmp_path)
    assert [r.status for r in ssh.ssh_checks(spec)] == ["skip"]
