"""The Kubernetes target: the official chart, Secrets and values rendered from platform.yaml."""

from __future__ import annotations

from pathlib import Path

from cryptography.fernet import Fernet
from rich.console import Console

from .. import keystore
from ..dburl import connect, explain_connect_error
from ..errors import PlatformError
from ..fernetkeys import key_file, read_keys, undecryptable
from ..target import Capability, Target
from .deploy import apply_fernet_secret, deploy_command
from .render import render_command


class KubernetesTarget(Target):
    name = "kubernetes"
    capabilities = frozenset({Capability.CLUSTER})

    @property
    def instead(self) -> dict[str, str]:
        ns, release = self.spec.kubernetes.namespace, self.spec.kubernetes.release
        return {
            "up": "use `airflow-gitops deploy` (the chart starts the platform in the cluster); "
            "`airflow-gitops verify --target kubernetes` shows it running",
            "down": f"remove the release with helm: `helm -n {ns} uninstall {release}`",
            "status": "use `airflow-gitops verify --target kubernetes` (workloads, Jobs, the running containers)",
            "logs": f"use kubectl: `kubectl -n {ns} logs deploy/{release}-scheduler` (or another component)",
            "sync": "use `airflow-gitops deploy`: it applies platform.yaml's Connections, Variables and pools",
            "run": f"trigger the DAG in the Airflow UI (`kubectl -n {ns} port-forward svc/{release}-api-server 8080`)",
            "predict": "call the serving Service's /predict in the cluster (`airflow-gitops render` writes it "
            "into serving.yaml)",
        }

    def render(self, out: Path, *, chart: str | None, console: Console):
        return render_command(self.spec, out, chart=chart, console=console)

    def deploy(
        self, out: Path, *, chart: str | None, dry_run: bool, console: Console, wait: bool, timeout: int
    ) -> None:
        deploy_command(self.spec, out, chart=chart, dry_run=dry_run, console=console, wait=wait, timeout=timeout)

    def checked_database_url(self) -> tuple[str | None, str]:
        url = self.spec.database.expanded_url()
        if url is None:
            return None, "not checked: database.url is not set (the chart needs an external one)"
        return url, ""

    def referenced_files(self):
        refs = super().referenced_files()
        chart = self.spec.kubernetes.chart
        if chart and "://" not in chart:
            refs["kubernetes.chart"] = self.spec.path(chart)
        return refs

    def rotate_fernet_key(self, console: Console) -> None:
        """Two runs of this command around the in-cluster re-encryption:

        1. a new key goes FIRST in STATE_DIR/secrets/fernet.key (NEW,OLD), into the cluster's Secret, and
           the Airflow pods restart with both keys (the old one still decrypts);
        2. (you) `kubectl exec deploy/RELEASE-scheduler -- airflow rotate-fernet-key` re-encrypts;
        3. this command again: proves every stored value decrypts with NEW alone (it reads the metadata
           database at database.url), drops OLD, updates the Secret, restarts the pods.
        """
        path = key_file(self.spec)
        keys = read_keys(path)
        k8s = self.spec.kubernetes
        ns, release, secret = k8s.namespace, k8s.release, self.spec.secrets.fernet_key_secret
        rotate = f"kubectl -n {ns} exec deploy/{release}-scheduler -- airflow rotate-fernet-key"
        if len(keys) == 1:
            keystore.write_private(path, Fernet.generate_key().decode() + "," + keys[0].decode() + "\n")
            console.print(f"Step 1 of 2: a new key is FIRST in {path} (the old key still decrypts).")
            apply_fernet_secret(self.spec, console)
            console.print(
                f"Now:\n  `{rotate}`   (re-encrypts every Connection and Variable with the new key)\n"
                "then run `airflow-gitops rotate-fernet-key --target kubernetes` again: it drops the old key "
                "after proving every value decrypts with the new one."
            )
            return
        url = self.spec.database.resolved_url()
        if not url:
            raise PlatformError("database.url is not set", "set database.url to the cluster's metadata database")
        try:
            conn = connect(url, application_name="airflow-gitops-rotate")
        except Exception as err:  # noqa: BLE001
            saw, fix = explain_connect_error(err, url)
            raise PlatformError(
                f"cannot prove the rotation finished: {saw}; {path} keeps both keys (nothing is lost)",
                f"{fix}; or run this where the database is reachable",
            ) from None
        try:
            total, bad = undecryptable(conn, keys[:1])
        finally:
            conn.close()
        if bad:
            raise PlatformError(
                f"{len(bad)} of {total} values are not re-encrypted with the new key yet ({', '.join(bad[:5])}); "
                f"{path} and Secret {ns}/{secret} keep both keys",
                f"run `{rotate}`, then this command again",
            )
        keystore.write_private(path, keys[0].decode() + "\n")
        console.print(f"Step 2 of 2: all {total} encrypted values decrypt with the new key alone; old key dropped.")
        apply_fernet_secret(self.spec, console)
