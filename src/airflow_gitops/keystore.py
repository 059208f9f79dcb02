"""Key material: Fernet/JWT/API keys, passwords, SSH deploy keys. Generated once, 0600, reused.

Why "generated once and reused": Airflow encrypts Connections and Variables with the Fernet key and
signs task tokens with the JWT secret. A key that changes between ``down``/``up`` (or ``helm delete`` +
``install``, the seed's concern) makes every stored secret unreadable (``InvalidToken``) and breaks
running tasks. So every key lives in one file under the state directory's ``secrets/`` folder, written
``0600`` from its first byte (a temporary file made 0600 by ``mkstemp``, then an atomic rename), and is
never printed or logged.

Files are trusted only as we would have written them: a key file that is a symbolic link, not a
regular file, or owned by another user is refused (a link would get its target chmodded and shipped
in a Secret; a file another user owns could have been planted).
"""

from __future__ import annotations

import os
import secrets
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .errors import PlatformError
from .spec import PlatformSpec

FERNET_KEY = "fernet.key"
JWT_SECRET = "jwt_secret"
API_SECRET_KEY = "api_secret_key"
ADMIN_PASSWORD = "admin_password"
DB_PASSWORD = "db_password"
PG_SUPERUSER_PASSWORD = "pg_superuser_password"


def _refuse(path: Path, why: str, fix: str) -> PlatformError:
    return PlatformError(f"key file {path} {why}; it was not used", fix)


def check_trusted(path: Path) -> os.stat_result | None:
    """lstat ``path`` and refuse a symlink, a non-regular file or a file another user owns.

    Returns None when nothing is there.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        raise _refuse(
            path,
            "is a symbolic link",
            f"replace the link by the file itself (cp --remove-destination "
            f'"$(readlink -f {path})" {path}), or remove it to generate a new one',
        )
    if not stat.S_ISREG(st.st_mode):
        raise _refuse(path, "is not a regular file", f"remove {path} (a directory or device is not a key)")
    if st.st_uid != os.geteuid():
        raise _refuse(
            path,
            f"is owned by another user (uid {st.st_uid})",
            f"if you trust it: `chown {os.geteuid()} {path}`; otherwise remove it",
        )
    return st


def read_private(path: Path, *, tighten: bool = False) -> bytes:
    """Read a key file without following a symlink; with ``tighten``, make it 0600 (never loosen)."""
    st = check_trusted(path)
    if st is None:
        raise FileNotFoundError(path)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        if tighten and stat.S_IMODE(st.st_mode) & 0o077:
            os.fchmod(fd, 0o600)
        with os.fdopen(fd, "rb") as fh:
            fd = -1
            return fh.read()
    finally:
        if fd >= 0:
            os.close(fd)


def write_private(path: Path, content: str | bytes) -> None:
    """Write ``content`` to ``path`` with mode 0600 from the first byte, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.parent.name == "secrets":
        os.chmod(path.parent, 0o700)
    check_trusted(path)  # never replace a planted link or another user's file silently
    data = content.encode() if isinstance(content, str) else content
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mkstemp creates 0600
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)  # and the rename itself survives a crash
    finally:
        os.close(dir_fd)


def ensure(path: Path, generate: Callable[[], str], check: Callable[[str], list[str]] | None = None) -> str:
    """Return the secret stored at ``path``, generating and storing it (0600) on first use.

    A stored file that is empty (or that ``check`` finds problems in) is refused, never used nor replaced:
    an empty Fernet key makes Airflow store Connections unencrypted, a new one makes the old ones unreadable.
    """
    if check_trusted(path) is not None:
        value = read_private(path, tighten=True).decode("utf-8", errors="replace").strip()
        found = check(value) if check and value else []
        problems = ["is empty"] if not value else [f"holds an invalid key ({p})" for p in found]
        if problems:
            raise _refuse(
                path,
                "; ".join(problems),
                f"restore {path} from your backup of the state folder; only if nothing was ever stored with it, "
                f"remove {path} and a new one is generated",
            )
        return value
    value = generate()
    write_private(path, value + "\n")
    return value


def parse_fernet_keys(text: str) -> tuple[list[bytes], list[str]]:
    """Split a comma-separated Fernet key list; returns (keys, problems)."""
    keys, problems = [], []
    parts = [p.strip() for p in text.strip().split(",")]
    for i, part in enumerate(parts, 1):
        label = "the key" if len(parts) == 1 else f"key {i} of {len(parts)}"
        if not part:
            problems.append(f"{label} is empty (stray comma?)")
            continue
        try:
            Fernet(part.encode())
            keys.append(part.encode())
        except (ValueError, TypeError):
            problems.append(f"{label} is not 32 url-safe base64-encoded bytes ({len(part)} characters)")
    return keys, problems


def _token() -> str:
    return secrets.token_urlsafe(32)


def _password() -> str:
    # URL-safe characters only, so the value can be put in a database URL without encoding.
    return secrets.token_urlsafe(18)


def fernet_key(spec: PlatformSpec) -> str:
    """The platform's Fernet key (the first of a comma-separated list while rotating)."""
    return ensure(
        spec.secrets_dir / FERNET_KEY, lambda: Fernet.generate_key().decode(), lambda v: parse_fernet_keys(v)[1]
    )


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


# Serving (issue 20): the key MLflow encrypts webhook secrets with in its database, and the secret
# MLflow signs deliveries to the serving component with. Both generated here, 0600, never printed.
MLFLOW_WEBHOOK_KEY = "mlflow_webhook_encryption_key"
SERVING_WEBHOOK_SECRET = "serving_webhook_secret"


def mlflow_webhook_key(spec: PlatformSpec) -> str:
    return ensure(spec.secrets_dir / MLFLOW_WEBHOOK_KEY, lambda: Fernet.generate_key().decode())


def serving_webhook_secret(spec: PlatformSpec) -> str:
    return ensure(spec.secrets_dir / SERVING_WEBHOOK_SECRET, _token)


# The local MLflow server's authentication (issue 22): the one MLflow user the platform's tasks, serving
# and checks use (MLflow's admin: the server sets its password from this file before it answers), and
# the key its basic-auth app signs its CSRF tokens with. Generated here, 0600, never printed.
MLFLOW_USER = "airflow-gitops"
MLFLOW_PASSWORD = "mlflow_password"
MLFLOW_FLASK_SECRET_KEY = "mlflow_flask_secret_key"


def mlflow_password(spec: PlatformSpec) -> str:
    return ensure(spec.secrets_dir / MLFLOW_PASSWORD, _token)


def mlflow_flask_secret_key(spec: PlatformSpec) -> str:
    return ensure(spec.secrets_dir / MLFLOW_FLASK_SECRET_KEY, _token)


def load_deploy_key(private_path: Path):
    """Load an SSH private key we may use unattended, or raise PlatformError naming the fix."""
    keygen = f"ssh-keygen -t ed25519 -N '' -f {private_path}"
    data = read_private(private_path)
    try:
        if data.lstrip().startswith(b"-----BEGIN OPENSSH"):
            return serialization.load_ssh_private_key(data, password=None)
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise PlatformError(
            f"the deploy key {private_path} is protected by a passphrase: git-sync and Airflow cannot type it",
            f"remove the passphrase: ssh-keygen -p -N '' -f {private_path}",
        ) from None
    except Exception as err:  # noqa: BLE001 - ValueError / UnsupportedAlgorithm for garbage or odd formats
        raise PlatformError(
            f"the deploy key {private_path} is not a usable OpenSSH or PEM private key ({type(err).__name__})",
            f"point dags.ssh_key_file at the private half, or generate a new one: {keygen}",
        ) from None


def generate_deploy_key(private_path: Path, comment: str = "airflow-gitops deploy key") -> str:
    """Create an ed25519 deploy key at ``private_path`` (0600) unless one exists.

    Returns the public half in OpenSSH format, for the Git host's deploy-key page (read access is
    enough: Airflow only pulls).
    """
    if check_trusted(private_path) is not None:
        key = load_deploy_key(private_path)
    else:
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
        write_private(private_path, pem)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    public_line = f"{public.decode()} {comment}\n"
    pub_path = private_path.with_name(private_path.name + ".pub")
    if not pub_path.exists() and not pub_path.is_symlink():
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
