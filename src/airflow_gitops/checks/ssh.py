"""The SSH deploy key and the pinned known_hosts (the seed's "SSH key permission" troubleshooting item).

A deploy key needs READ access only: Airflow (git-sync or the Git DAG bundle) only clones and fetches.
The seed's checklist asks for write access; read-only is enough and safer (a leaked key cannot push).
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import stat
import subprocess
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from .. import keystore
from ..errors import PlatformError
from ..spec import PlatformSpec
from .result import CheckResult, fail, ok, skip

READ_ONLY_NOTE = (
    "register its public half as a deploy key with READ access only (Airflow only pulls; "
    "the seed's 'write access' is not needed and a read-only key cannot push if it leaks)"
)
# "-----BEGIN <kind>PRIVATE KEY-----" for the formats ssh and git accept.
PEM_HEADERS = tuple(
    b"-----BEGIN " + kind + b"PRIVATE KEY-----" for kind in (b"OPENSSH ", b"RSA ", b"EC ", b"", b"ENCRYPTED ")
)


def fingerprint(public_key) -> str:
    """SHA256 fingerprint as printed by ``ssh-keygen -lf`` (base64, no padding)."""
    line = public_key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    blob = base64.b64decode(line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _key_type(public_key) -> str:
    line = public_key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return line.split()[0].decode()


def check_key_permissions(path: Path) -> CheckResult:
    name = "ssh.key.permissions"
    if not path.exists():
        return fail(name, f"{path} does not exist", "set dags.ssh_key_file to the deploy key's private half")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode in (0o600, 0o400):
        return ok(name, f"{path} is {mode:04o}")
    return fail(
        name,
        f"{path} is {mode:04o}: ssh refuses a private key others can read ('UNPROTECTED PRIVATE KEY FILE')",
        f"chmod 600 {path}",
    )


def check_key(path: Path) -> list[CheckResult]:
    """Format (OpenSSH/PEM, trailing newline), no passphrase, and the public fingerprint."""
    if not path.exists():
        return [skip("ssh.key.format", f"{path} does not exist")]
    data = path.read_bytes()
    name = "ssh.key.format"
    if data.lstrip().startswith((b"ssh-", b"ecdsa-", b"sk-")):
        return [fail(name, f"{path} holds a PUBLIC key", "point dags.ssh_key_file at the private half (no .pub)")]
    if not data.startswith(PEM_HEADERS):
        return [
            fail(
                name,
                f"{path} is not an OpenSSH or PEM private key (first line is not '-----BEGIN ... PRIVATE KEY-----')",
                "use the file `ssh-keygen -t ed25519 -f KEY -N ''` wrote (or `airflow-gitops init --deploy-key`)",
            )
        ]
    if b"\r\n" in data:
        return [
            fail(
                name, f"{path} has Windows (CRLF) line endings: ssh says 'invalid format'", f"sed -i 's/\\r$//' {path}"
            )
        ]
    if not data.endswith(b"\n"):
        return [
            fail(
                name,
                f"{path} has no trailing newline: ssh/git-sync reject it with 'invalid format' "
                "(common after copying the key into a Secret)",
                f"echo >> {path}",
            )
        ]
    first_line = data.split(b"\n", 1)[0].decode()
    results = [ok(name, f"{first_line} with trailing newline")]
    try:
        key = keystore.load_deploy_key(path)
    except PlatformError as err:
        results.append(fail("ssh.key.passphrase", err.problem, err.fix))
        return results
    results.append(ok("ssh.key.passphrase", "no passphrase"))
    pub = key.public_key()
    results.append(ok("ssh.key.fingerprint", f"{fingerprint(pub)} ({_key_type(pub)})", READ_ONLY_NOTE))
    return results


def known_hosts_name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


def _find_host(known_hosts: Path, host_name: str) -> list[str]:
    """Key types known for ``host_name`` (ssh-keygen -F, which also matches hashed entries)."""
    if shutil.which("ssh-keygen"):
        proc = subprocess.run(
            ["ssh-keygen", "-F", host_name, "-f", str(known_hosts)], capture_output=True, text=True, timeout=10
        )
        lines = [ln for ln in proc.stdout.splitlines() if ln and not ln.startswith("#")]
        return [ln.split()[1] for ln in lines if len(ln.split()) >= 3]
    types = []
    for line in known_hosts.read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) >= 3 and not line.startswith("#") and host_name in parts[0].split(","):
            types.append(parts[1])
    return types


def check_known_hosts(spec: PlatformSpec) -> CheckResult:
    name = "ssh.known_hosts"
    if not spec.dags.is_ssh:
        return skip(name, "dags.repo is not an SSH URL")
    host, port = spec.dags.ssh_host_port()
    host_name = known_hosts_name(host, port)
    path = spec.path(spec.dags.known_hosts_file)
    scan = f"ssh-keyscan -p {port} {host} >> {path} (then compare its fingerprint with the host's published one)"
    if not path.exists():
        return fail(name, f"{path} does not exist", scan)
    types = _find_host(path, host_name)
    if not types:
        return fail(
            name,
            f"{path} has no key for {host_name}: strict host key checking will refuse the connection",
            scan,
        )
    return ok(name, f"{path} pins {host_name} ({', '.join(sorted(set(types)))}); checked strictly")


def ssh_checks(spec: PlatformSpec) -> list[CheckResult]:
    if not spec.dags.is_ssh:
        why = "dags.repo is not set (local repository)" if spec.dags.repo is None else "dags.repo is not an SSH URL"
        return [skip("ssh.key", f"not checked: {why}")]
    key = spec.path(spec.dags.ssh_key_file)
    return [check_key_permissions(key), *check_key(key), check_known_hosts(spec)]
