"""The OS user DAG code runs as on the local target (``local.task_user``), and what it may read.

When ``up`` runs as root, DAG code - tasks, and DAG files while the DAG processor parses them - runs in
processes of a user of its own, forked by that user's zygote (``zygote.py``; ``patches/task_zygote``
hands them over). That user reads, in the state folder, only what is made readable to its group:

* the bundle worktrees DAG code is imported from (root checks them out; group-readable, not writable);
* its own folder ``task-home/`` (0700, its own): its ``AIRFLOW_HOME`` (no secret in it), copies of the
  AWS files tasks use, the zygote's socket.

The state folder, ``airflow/`` and the bundle storage are passable for its group (mode 0710: it can open
a path it knows, not list or change anything); ``airflow.cfg`` (database URL, Fernet key, JWT secret), the
secrets folder, the database, logs and every other file stay root's own 0600/0700. No other user is in
that group (refused otherwise), so other local users still see nothing of the platform.

Without root DAG code runs as the user who ran ``up`` (it can then read what that user can:
docs/architecture.md says so); ``same`` asks for that as root too.
"""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import shutil
import stat
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from ..errors import PlatformError
from .layout import Layout, private_socket_dir

DEFAULT_USER = "airflow-gitops-tasks"


@dataclass(frozen=True)
class TaskUser:
    name: str
    uid: int
    gid: int


def wanted(layout: Layout) -> str | None:
    """The user DAG code is to run as, or None: as the user who runs ``up`` (not root, or ``same``)."""
    setting = layout.spec.local.task_user
    if os.geteuid() != 0 or setting == "same":
        return None
    return DEFAULT_USER if setting == "auto" else setting


def resolve(layout: Layout) -> TaskUser | None:
    """:func:`wanted` as an existing account; a missing or unsafe one is a :class:`PlatformError`."""
    name = wanted(layout)
    if name is None:
        return None
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise PlatformError(
            f"local.task_user is {name!r}, which is not a user on this machine",
            f"create it (`useradd --system --user-group --no-create-home --shell /usr/sbin/nologin {name}`), "
            "or remove local.task_user (the default creates airflow-gitops-tasks)",
        ) from None
    if pw.pw_uid == 0 or pw.pw_gid == 0:
        raise PlatformError(
            f"local.task_user {name!r} has uid {pw.pw_uid} / gid {pw.pw_gid}: root's",
            "give a user of its own (not uid 0, not in group 0), or 'same' to run DAG code as root knowingly",
        )
    others = sorted(
        {p.pw_name for p in pwd.getpwall() if p.pw_gid == pw.pw_gid and p.pw_name != name}
        | {m for m in _members(pw.pw_gid) if m != name}
    )
    if others:
        raise PlatformError(
            f"local.task_user {name!r} has group {_group_name(pw.pw_gid)} as its own, which {', '.join(others[:3])} "
            "share: they could read the DAG worktrees and pass into the state folder",
            "give the task user a group of its own (`useradd --user-group`)",
        )
    return TaskUser(name, pw.pw_uid, pw.pw_gid)


def _exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _members(gid: int) -> list[str]:
    try:
        return list(grp.getgrgid(gid).gr_mem)
    except KeyError:
        return []


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def ensure(layout: Layout, say) -> TaskUser | None:
    """:func:`resolve`, creating the default user first when it is missing (``up``, as root)."""
    name = wanted(layout)
    if name is None:
        return None
    if layout.spec.local.task_user == "auto" and not _exists(name):
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        command = [useradd, "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent"]
        command += ["--shell", "/usr/sbin/nologin", name]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        except OSError as err:
            done = subprocess.CompletedProcess(command, 1, "", str(err))
        if done.returncode != 0:
            raise PlatformError(
                f"could not create the user DAG code runs as ({name}): {(done.stderr or '').strip()[:200]}",
                f"create it yourself (`useradd --system --user-group {name}`), or set local.task_user: same",
            )
        say(f"created the system user {name}: DAG code runs as it (local.task_user)")
    return resolve(layout)


def _allowed(st: os.stat_result, user: TaskUser, need: int) -> bool:
    """May ``user`` (no supplementary group: the zygote has none) do ``need`` (r=4, w=2, x=1) on it?"""
    if st.st_uid == user.uid:
        shift = 6
    elif st.st_gid == user.gid:
        shift = 3
    else:
        shift = 0
    return (st.st_mode >> shift) & need == need


def blocking_folder(path: Path, user: TaskUser, need: int = 0) -> Path | None:
    """The first folder above ``path`` that ``user`` may not pass through - or ``path`` itself, when
    ``user`` may not do ``need`` on it - or None."""
    path = Path(os.path.abspath(path))
    for folder in reversed(path.parents):
        if not _allowed(os.stat(folder), user, 1):
            return folder
    if need and not _allowed(os.stat(path), user, need):
        return path
    return None


def _environment() -> list[tuple[Path, int]]:
    """What the task user's processes must reach of this Python environment, and how."""
    import airflow_gitops

    paths = sysconfig.get_paths()
    return [
        (Path(os.path.realpath(sys.executable)), 5),
        (Path(paths["stdlib"]), 5),
        (Path(paths["purelib"]), 5),
        (Path(airflow_gitops.__file__).resolve().parent, 5),
    ]


_NOT_RUNNABLE_FIX = (
    "make the environment readable to that user: create it from a Python outside /root (as root, "
    "scripts/bootstrap.sh does: `uv sync --python /usr/bin/python3.11`) in a project folder others may pass "
    "through; or set local.task_user: same (DAG code then runs as root and can read the platform's keys)"
)


def problem(layout: Layout, user: TaskUser) -> PlatformError | None:
    """Why ``user`` could not run DAG code here (the state folder or this Python environment out of its
    reach), or None. Read from the modes (no process started): ``check_can_run`` confirms at ``up``."""
    folder = blocking_folder(layout.root, user)
    if folder is not None:
        return PlatformError(
            f"DAG code is to run as the user {user.name} (local.task_user), who cannot reach the state folder "
            f"{layout.root}: {folder} is mode {stat.filemode(os.stat(folder).st_mode)}",
            f"let others pass through it, not list it (`chmod o+x {folder}`), or set local.state_dir to a "
            "folder others can reach, or local.task_user: same (DAG code then runs as root and can read the "
            "platform's keys)",
        )
    for path, need in _environment():
        folder = blocking_folder(path, user, need)
        if folder is not None:
            return PlatformError(
                f"DAG code is to run as the user {user.name} (local.task_user), who cannot run this Python "
                f"environment: {path} is out of its reach ({folder} is mode "
                f"{stat.filemode(os.stat(folder).st_mode)})",
                _NOT_RUNNABLE_FIX,
            )
    return None


def active(layout: Layout) -> TaskUser | None:
    """The user DAG code runs as on this platform, or None (as the user who runs ``up``): :func:`wanted`,
    unless that is the default ``auto`` and :func:`problem` says it could not (``up`` then says so)."""
    name = wanted(layout)
    if name is None or not _exists(name):
        return None
    user = resolve(layout)
    if layout.spec.local.task_user == "auto" and problem(layout, user) is not None:
        return None
    return user


# What the zygote needs first: our package and Airflow's, found (not imported: that takes seconds).
_CAN_RUN = (
    "import importlib.util, sys, airflow_gitops.local.zygote\n"
    "sys.exit(0 if importlib.util.find_spec('airflow') else 'No module named airflow')"
)


def check_can_run(user: TaskUser, cwd: Path, python: str = sys.executable) -> None:
    """Can ``user`` run this Python environment (interpreter, site-packages, our package)? The zygote
    would otherwise die at its start with a bare PermissionError in its log."""
    try:
        done = subprocess.run(
            [python, "-c", _CAN_RUN],
            user=user.uid,
            group=user.gid,
            extra_groups=[],
            cwd=str(cwd),
            env={"PATH": "/usr/bin:/bin", "HOME": str(cwd), "AIRFLOW_HOME": str(cwd / "airflow")},
            capture_output=True,
            text=True,
            timeout=120,
        )
        problem = None if done.returncode == 0 else ((done.stderr or "").strip().splitlines() or ["?"])[-1]
    except PermissionError as err:
        problem = str(err)
    except subprocess.TimeoutExpired:
        problem = "it did not finish importing within 120 s"
    if problem:
        raise PlatformError(
            f"DAG code runs as the user {user.name} (local.task_user), who cannot run this Python environment "
            f"({python}): {problem[:300]}",
            _NOT_RUNNABLE_FIX,
        )


def prepare(layout: Layout, user: TaskUser) -> None:
    """The state folder passable for the task user's group; ``tasks/`` (root's, 0710): the files its
    processes read (an empty ``airflow.cfg``, copies of the AWS files; 0640 root:group), and its own home
    ``tasks/home/`` (0700, the task user's), into which root writes nothing (a link planted there must
    never redirect a write of root's)."""
    from .patches.task_zygote import allow_traverse

    for folder in (layout.root, layout.airflow_home, layout.bundles, layout.tasks, layout.tasks / "aws"):
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        _root_folder(folder)
        allow_traverse(folder, user.gid)
    for folder in (layout.root, layout.airflow_home):  # what the task user may now pass: closed to it
        for entry in os.scandir(folder):
            st = entry.stat(follow_symlinks=False)
            if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o007:
                os.chmod(entry.path, stat.S_IMODE(st.st_mode) & ~0o007)
    home = layout.task_home
    home.mkdir(mode=0o700, exist_ok=True)
    st = os.lstat(home)
    if not stat.S_ISDIR(st.st_mode):
        home.unlink()  # in root's folder: only root could have put it there
        home.mkdir(mode=0o700)
    os.lchown(home, user.uid, user.gid)
    os.chmod(home, 0o700)
    _write_shared(layout.tasks / "airflow.cfg", b"", user.gid)
    for source, target in zip((layout.aws_credentials, layout.aws_config), task_aws_files(layout), strict=True):
        if source.is_file():
            _write_shared(Path(target), source.read_bytes(), user.gid)
        elif os.path.lexists(target):
            os.unlink(target)


def _root_folder(path: Path) -> None:
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise PlatformError(
            f"{path} is not a folder of root's (owner uid {st.st_uid}): the task user must not own it",
            f"remove it (`rm -rf {path}`) and run `airflow-gitops up` again",
        )


def _write_shared(path: Path, data: bytes, gid: int) -> None:
    """``data`` at ``path`` (in a folder of root's), root's file, readable by group ``gid`` only (0640)."""
    tmp = path.with_name(f".{path.name}.tmp")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchown(fd, -1, gid)
        os.fchmod(fd, 0o640)
        with os.fdopen(fd, "wb", closefd=False) as out:
            out.write(data)
            out.flush()
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def task_aws_files(layout: Layout) -> tuple[str, str]:
    """Where the task user's processes read the AWS files (copies of the platform's, made at ``up``)."""
    return str(layout.tasks / "aws" / "credentials"), str(layout.tasks / "aws" / "config")


def zygote_socket(layout: Layout, user: TaskUser) -> Path:
    """Where the zygote listens: in the task user's home, or, when that path is too long for a Unix
    socket, in ``/tmp/airflow-gitops-<uid>-<digest>`` made 0700 for the task user (checked every time)."""
    path = layout.task_home / "zygote.sock"
    if len(os.fsencode(str(path))) < 100:
        return path
    digest = hashlib.sha256(os.fsencode(str(layout.root))).hexdigest()[:12]
    return private_socket_dir(Path("/tmp") / f"airflow-gitops-{user.uid}-{digest}", user.uid) / "zygote.sock"
