"""Key material: Fernet/JWT/API keys, passwords, SSH deploy keys. Generated once, 0600, reused.

Why "generated once and reused": Airflow encrypts Connections and Variables with the Fernet key and
signs task tokens with the JWT secret. A key that changes between ``down``/``up`` (or ``helm delete`` +
``install``, the seed's concern) makes every stored secret unreadable (``InvalidToken``) and breaks
running tasks. So every key lives in one file under the state directory's ``secrets/`` folder, written
``0600`` through a temporary file and an atomic rename, and is never printed or logged.
"""

from __future__ import annotations

import os
import secrets as _random
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .spec import PlatformSpec

FERNET_KEY = "fernet.key"
JWT_SECRET = "jwt_secret"
API_SECRET_KEY = "api_secret_key"
ADMIN_PASSWORD = "admin_password"
DB_PASSWORD = "db_password"
PG_SUPERUSER_PASSWORD = "pg_superuser_password"


def write_private(path: Path, content: str | bytes) -> None:
    """Write ``content`` to ``path`` with mode 0600, atomically (no window where it is readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700) if path.parent.name == "secrets" else None
    data = content.encode() if isinstance(content, str) else content
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def ensure(path: Path, generate: Callable[[], str]) -> str:
    """Return the secret stored at ``path``, generating and storing it (0600) on first use."""
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            os.chmod(path, 0o600)  # tighten, never loosen
        return path.read_text(encoding="utf-8").strip()
    value = generate()
    write_private(path, value + "\n")
    return value


def _token() -> str:
    return _random.token_urlsafe(32)


def _password() -> str:
    # URL-safe characters only, so the value can be put in a database URL without encoding.
    return _random.token_urlsafe(18)


def fernet_key(spec: PlatformSpec) -> str:
    """The platform's Fernet key (the first of a comma-separated list while rotating)."""
    return ensure(spec.secrets_dir / FERNET_KEY, lambda: Fernet.generate_key().decode())


def jwt_secret(spec: PlatformSpec) -> str:
    return ensure(spec.secrets_dir / JWT_SECRET, _token)


def api_secret_key(spec: PlatformSpec) -> str:
    return ensure(spec.secrets_dir / API_SECRET_KEY, _token)


def admin_password(spec: PlatformSpec) -> str:
    return ensure(spec.secrets_dir / ADMIN_PASSWORD, _password)


def db_password(spec: PlatformSpec) -> str:
    return ensure(spec.secrets_dir / DB_PASSWORD, _password)


def pg_superuser_password(spec: PlatformSpec) -> str:
    return ensure(spec.secrets_dir / PG_SUPERUSER_PASSWORD, _password)


def generate_deploy_key(private_path: Path, comment: str = "airflow-gitops deploy key") -> str:
    """Create an ed25519 deploy key at ``private_path`` (0600) unless one exists.

    Returns the public half in OpenSSH format, for the Git host's deploy-key page (read access is
    enough: Airflow only pulls).
    """
    if private_path.exists():
        key = serialization.load_ssh_private_key(private_path.read_bytes(), password=None)
    else:
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
        write_private(private_path, pem)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    public_line = f"{public.decode()} {comment}\n"
    pub_path = private_path.with_name(private_path.name + ".pub")
    if not pub_path.exists():
        pub_path.write_text(public_line)
    return public_line.strip()


def all_secret_values(spec: PlatformSpec) -> list[str]:
    """Every secret value stored for this platform (used by tests and log scans to prove none leaks)."""
    out = []
    d = spec.secrets_dir
    if d.is_dir():
        for f in d.iterdir():
            if f.is_file() and not f.name.endswith(".pub"):
                out += [line.strip() for line in f.read_text(errors="ignore").splitlines() if len(line) > 15]
    return out
