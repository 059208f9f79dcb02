"""Where the local target keeps things, and the environment every Airflow process gets.

One state directory holds everything (default ``.airflow-gitops/``)::

    secrets/          0600 key material (Fernet, JWT, API secret, passwords)      survives down/up
    postgres/         PostgreSQL data directory                                    survives down/up
    dags.git/         the bare DAG repository (when dags.repo is unset)            survives down/up
    airflow/          AIRFLOW_HOME: logs, bundle clones                            survives down/up
    mlflow/           MLflow's working dir (its store is in PostgreSQL, artifacts in S3)
    aws/              credentials + config (the seed's /home/airflow/.aws)         survives down/up
    s3/               the local S3 endpoint's objects: one folder a bucket          survives down/up
    tasks/            what DAG code reads when it runs as local.task_user; its home  survives down/up
    supervisor/       supervisord.conf, the 0600 environment files, the launch plan, socket, pid
    logs/             one log file per component
"""

from __future__ import annotations

import hashlib
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

from .. import contract, keystore, managed
from ..errors import PlatformError
from ..spec import PlatformSpec

HOST = "127.0.0.1"


def unix_socket_path(directory: Path, name: str, short_suffix: str) -> Path:
    """``directory/name``, or ``<private dir>/<name>`` when that is too long for a Unix socket (AF_UNIX
    paths are limited to 107 BYTES): the private dir is ``/tmp/airflow-gitops-<uid>-<digest of directory>``,
    made 0700 by us and checked at every use (ours, private, not a symlink), so no other local user can
    put a socket where the platform's clients look (``private_socket_dir``)."""
    path = directory / name
    if len(os.fsencode(str(path))) < 100:
        return path
    digest = hashlib.sha256(os.fsencode(str(directory))).hexdigest()[:12]
    return private_socket_dir(Path("/tmp") / f"airflow-gitops-{os.geteuid()}-{digest}") / name


def private_socket_dir(path: Path, owner: int | None = None) -> Path:
    """``path`` as a directory only ``owner`` (default: we) can enter: created 0700 and given to it, or
    refused when it is not that user's and private."""
    uid = os.geteuid() if owner is None else owner
    whose = "yours" if owner is None else f"uid {uid}"
    try:
        path.mkdir(mode=0o700)
        if uid != os.geteuid():
            os.lchown(path, uid, -1)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or st.st_mode & 0o077:
        raise PlatformError(
            f"{path} (where this platform keeps its sockets, its state path being long) is not a private "
            f"directory of {whose} (owner uid {st.st_uid}, mode {stat.filemode(st.st_mode)}): another user may "
            "have planted it",
            f"remove it (`rm -rf {path}`) and run the command again, or use a shorter state path",
        )
    return path


@dataclass(frozen=True)
class Layout:
    spec: PlatformSpec

    @property
    def root(self) -> Path:
        return self.spec.state_dir

    @property
    def secrets(self) -> Path:
        return self.spec.secrets_dir

    @property
    def airflow_home(self) -> Path:
        return self.root / "airflow"

    @property
    def bundles(self) -> Path:
        return self.airflow_home / "bundles"

    @property
    def tasks(self) -> Path:
        """What the task user's processes read (``task_user.py``); its home is ``task_home``."""
        return self.root / "tasks"

    @property
    def task_home(self) -> Path:
        return self.tasks / "home"

    @property
    def migrated_stamp(self) -> Path:
        """``<Airflow version> <schema revision>`` once ``up`` migrated the metadata database."""
        return self.airflow_home / "migrated.stamp"

    @property
    def task_logs(self) -> Path:
        return self.airflow_home / "logs"

    @property
    def mlflow(self) -> Path:
        return self.root / "mlflow"

    @property
    def aws(self) -> Path:
        return self.root / "aws"

    @property
    def aws_credentials(self) -> Path:
        return (
            self.spec.path(self.spec.aws.credentials_file)
            if self.spec.aws.credentials_file
            else (self.aws / "credentials")
        )

    @property
    def aws_config(self) -> Path:
        return self.spec.path(self.spec.aws.config_file) if self.spec.aws.config_file else self.aws / "config"

    @property
    def s3_data(self) -> Path:
        return self.root / "s3"

    @property
    def supervisor(self) -> Path:
        return self.root / "supervisor"

    @property
    def forkserver_socket(self) -> Path:
        """Where the fork server listens (``forkserver.py``)."""
        return unix_socket_path(self.supervisor, "forkserver.sock", "-forkserver.sock")

    @property
    def launch_plan(self) -> Path:
        """What ``launch.py`` does to each Airflow process (``launch_plan.py``; 0600 JSON, no secret)."""
        return self.supervisor / "launch-plan.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def ports(self):
        return self.spec.local.ports

    @property
    def api_url(self) -> str:
        return f"http://{HOST}:{self.ports.api}"

    @property
    def mlflow_url(self) -> str:
        return self.spec.mlflow.tracking_uri or f"http://{HOST}:{self.ports.mlflow}"

    @property
    def s3_url(self) -> str | None:
        """The S3/STS endpoint DAG code talks to; None means real AWS."""
        if self.spec.aws.endpoint_url:
            return self.spec.aws.endpoint_url
        if self.spec.aws.credentials_file:
            return None
        return f"http://{HOST}:{self.ports.s3}"

    @property
    def serving_url(self) -> str | None:
        """The serving component (127.0.0.1 only); None when ``serving.enabled`` is false."""
        return f"http://{HOST}:{self.ports.serving}" if self.spec.serving.enabled else None

    @property
    def runs_local_s3(self) -> bool:
        return self.spec.aws.endpoint_url is None and self.spec.aws.credentials_file is None

    @property
    def runs_local_mlflow(self) -> bool:
        return self.spec.mlflow.tracking_uri is None

    @property
    def runs_local_postgres(self) -> bool:
        return self.spec.database.url is None


def postgres_user() -> pwd.struct_passwd | None:
    """The OS user PostgreSQL runs as: None when we are not root (run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    return None


def dag_runtime_env(layout: Layout, *, credentials: bool = True) -> dict[str, str]:
    """What DAG code sees here: the contract's runtime env, with the AWS files of the state directory and
    (``credentials``) the local MLflow server's user and password (generated 0600 once; MLflow's clients
    in tasks, serving and the CLI's checks send them). An external ``mlflow.tracking_uri`` gets the login
    of mlflow.username / mlflow.password, where platform.yaml gives one."""
    credential = None
    if credentials and layout.runs_local_mlflow:
        credential = (keystore.MLFLOW_USER, keystore.mlflow_password(layout.spec))
    elif credentials and layout.spec.mlflow.password is not None:
        credential = managed.resolve(layout.spec).mlflow_login
    return contract.dag_runtime_env(
        layout.spec,
        mlflow_uri=layout.mlflow_url,
        s3_endpoint=layout.s3_url,
        aws_files=(str(layout.aws_credentials), str(layout.aws_config)),
        s3_only_endpoint=layout.runs_local_s3,
        serving_url=layout.serving_url,
        mlflow_credential=credential,
    )
