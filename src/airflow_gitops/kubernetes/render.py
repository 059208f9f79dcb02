"""``airflow-gitops render --target kubernetes``: values, Secrets, manifests and image files.

Output folder (default ``rendered/``)::

    values.yaml         Helm values for the official chart (Secret names only, no key material)
    secrets.yaml        the Secrets, 0600, git-ignored: applied by `airflow-gitops deploy`
    manifests.yaml      the namespace and the logs PVC (ReadWriteMany)
    serving.yaml        the serving Deployment, Service, PodDisruptionBudget (+ Ingress): applied by `deploy`
                        (absent with serving.enabled: false)
    image/Dockerfile    apache/airflow:<version>-python<X.Y> + requirements.txt (the extra packages and
                        everything they pull in) + constraints.txt (every package), pinned from uv.lock
    NOTES.md            what you still create yourself (PostgreSQL, RWX storage, ingress controller, ...)
    chart.yaml          with --chart: the whole chart rendered with these values
"""

from __future__ import annotations

import platform
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .. import contract
from ..errors import PlatformError
from ..keystore import write_private
from ..spec import PlatformSpec
from . import image, manifests
from . import serving as serving_k8s
from .values import LOGIN_CHECKSUM, build_values, worker_pod_template

OFFICIAL_REPO = "https://airflow.apache.org"
CHART_NAME = "airflow"


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str)


def dump(doc: Any) -> str:
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1000)


def dump_all(docs: list[Any]) -> str:
    return "".join("---\n" + dump(d) for d in docs)


@dataclass
class Rendered:
    out: Path
    values: dict[str, Any]
    secrets: manifests.SecretBundle
    manifests: list[dict[str, Any]]
    warnings: list[str] = field(default_factory=list)
    chart_version: str | None = None
    serving: list[dict[str, Any]] = field(default_factory=list)  # serving.yaml's objects (none: disabled)


@dataclass(frozen=True)
class ChartRef:
    """Where the chart comes from: a local folder or packaged ``.tgz``, or a repository at a version."""

    path: Path | None = None
    repo: str | None = None
    version: str | None = None

    @classmethod
    def parse(cls, ref: str | None, spec: PlatformSpec) -> ChartRef:
        """``--chart`` / ``kubernetes.chart``: a folder, a ``.tgz``, ``REPO_URL@VERSION``; None: the official one."""
        if ref is None:
            return cls(repo=OFFICIAL_REPO, version=spec.kubernetes.chart_version)
        path = Path(ref).expanduser()
        if path.is_dir() or (path.is_file() and path.name.endswith((".tgz", ".tar.gz"))):
            return cls(path=path.resolve())
        if "@" in ref and "://" in ref:
            repo, _, version = ref.rpartition("@")
            return cls(repo=repo, version=version)
        raise PlatformError(
            f"--chart {ref!r} is neither a chart folder, a packaged chart (.tgz) nor REPO_URL@VERSION",
            f"use e.g. --chart {OFFICIAL_REPO}@1.21.0, --chart ./airflow-1.21.0.tgz or --chart ./airflow",
        )


def load_chart(ref: ChartRef):
    """The chart as helm-python-sdk loads it (a repository chart is pulled into a temporary folder)."""
    import helm_python as helm

    try:
        if ref.path is not None:
            return helm.Chart.load(ref.path)
        tmp = tempfile.mkdtemp(prefix="airflow-chart-")
        helm.pull(CHART_NAME, repo_url=ref.repo, version=ref.version, destination=tmp, untar=True, untar_dir=tmp)
        return helm.Chart.load(Path(tmp) / CHART_NAME)
    except helm.HelmError as err:
        where = ref.path or f"{ref.repo}@{ref.version}"
        raise PlatformError(
            f"cannot load the chart {where}: {err}", "check the folder, file or REPO_URL@VERSION"
        ) from None


def _chart_pod_template(rendered: dict[str, str]) -> str:
    """The KubernetesExecutor's pod template in the chart's rendered ConfigMap (``pod_template_file.yaml``)."""
    for name, text in rendered.items():
        if not name.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(text):
            if (
                isinstance(doc, dict)
                and doc.get("kind") == "ConfigMap"
                and "pod_template_file.yaml" in (doc.get("data") or {})
            ):
                return doc["data"]["pod_template_file.yaml"]
    raise PlatformError(
        "the chart rendered no pod_template_file.yaml for the KubernetesExecutor",
        "render against the chart version this project tests (the default of kubernetes.chart_version)",
    )


def render_chart(chart, values: dict[str, Any], spec: PlatformSpec) -> dict[str, str]:
    import helm_python as helm

    try:
        chart.validate_schema(values)
        return chart.render(values, name=spec.kubernetes.release, namespace=spec.kubernetes.namespace, is_install=True)
    except helm.HelmError as err:
        raise PlatformError(
            f"the chart {chart.version} rejects the rendered values: {err}",
            f"render against chart {spec.kubernetes.chart_version} (kubernetes.chart_version)",
        ) from None


def _logs_note(spec: PlatformSpec) -> str:
    """NOTES.md's item on task log storage, for the logs.persistence / logs.remote combination."""
    sc = f" (storage class `{spec.logs.storage_class}`)" if spec.logs.storage_class else ""
    folder = contract.remote_log_folder(spec)
    if spec.logs.persistence and folder is None:
        return (
            f"**ReadWriteMany storage** for the logs PVC (NFS, EFS, Azure Files, CephFS...){sc}: task pods on "
            "other nodes mount it. No RWX storage class (EBS-style volumes are ReadWriteOnce)? Set "
            "`logs.remote: s3` and `logs.persistence: false`."
        )
    if spec.logs.persistence:
        return (
            f"**ReadWriteMany storage** for the logs PVC{sc}, which every task pod still mounts; task logs also "
            f"go to `{folder}/`. No RWX storage class? Set `logs.persistence: false`: the S3 copy is enough."
        )
    if folder is not None:
        return (
            f"**The S3 bucket** `{spec.aws.bucket}`, writable with the AWS Secret's credentials: task logs go to "
            f"`{folder}/` (no logs PVC)."
        )
    return (
        "**Nothing for logs**, but with `logs.persistence: false` and no `logs.remote` a task's log lives in "
        "its pod and is gone with it: set `logs.remote: s3` to keep them."
    )


NOTES = """# Before `airflow-gitops deploy`

airflow-gitops creates the namespace `{ns}`{claim} and the Secrets. You provide:

1. **A PostgreSQL** reachable from the cluster at the URL in `database.url` (the chart's own is off).
2. {logs}
3. **An ingress controller** serving host `{host}` (and DNS or /etc/hosts pointing at it).
4. **The image**: `docker build -t {image} image/ && docker push {image}`.
5. **The deploy key** (SSH repos): add the public half printed by `render` to the DAG repository as a
   read-only deploy key.
6. **MLflow** at `{mlflow}`.

`secrets.yaml` holds key material: it is written 0600 and git-ignored. Keep the state directory
(`{state}`): it holds the Fernet key, and a new key makes stored Connections unreadable.

## Versions tested together

- Chart **{chart}** (its `appVersion` is {app_version}) with Airflow **{airflow}** (from `uv.lock`; the chart
  runs the image's Airflow, `airflowVersion`/`defaultAirflowTag` in values.yaml say which). The project's
  tests render this chart with these values, validate them against its schema and install it on a real
  Kubernetes API server.
- The image: `apache/airflow:{airflow}-python{python}` plus `image/requirements.txt` (the extra packages
  and every package they pull in) with `image/constraints.txt` (every package of `uv.lock` for Python
  {python}): the versions the local platform and its tests run.

To pick another Airflow: change it in the project (`uv add "apache-airflow==X.Y.Z"`, run the tests), then
render again. To pick another chart: set `kubernetes.chart_version` (or `--chart`), render with
`--chart` to see the whole chart with these values, and run the tests against it.
"""


def render(spec: PlatformSpec, out: Path, *, chart: str | None = None, load_official: bool = False) -> Rendered:
    """Write every file; return what was written. Raises :class:`PlatformError` before writing on bad input.

    ``load_official``: with no ``chart`` nor ``kubernetes.chart``, pull the official chart to render with it
    (``deploy``: it installs that chart anyway, and the worker pod template is derived from it)."""
    chart_ref = chart or spec.kubernetes.chart
    chart_obj = load_chart(ChartRef.parse(chart_ref, spec)) if chart_ref or load_official else None
    warnings: list[str] = []
    secret_bundle = manifests.build_secrets(spec)
    warnings += secret_bundle.warnings
    values = build_values(
        spec,
        known_hosts=secret_bundle.known_hosts,
        chart_defaults=chart_obj.values if chart_obj is not None else None,
        warnings=warnings,
        pod_annotations=secret_bundle.checksums,
    )
    if spec.image.tag == "latest" and not spec.image.digest:
        warnings.append(
            f"image {spec.image.repository}:latest: a moving tag, so pods started at different times may run "
            "different images; set image.tag to a version you build, or image.digest to what your registry printed"
        )
    if spec.ingress.enabled and not spec.ingress.tls_secret:
        warnings.append(
            f"ingress {spec.ingress.host} has no TLS: the login and its session cookie cross the network in clear; "
            "set ingress.tls_secret to a kubernetes.io/tls Secret (see docs/platform-yaml.md)"
        )
    docs = manifests.namespace_and_pvc(spec)
    image.requirements(spec)  # bad image.extra_requirements: the error before anything is written
    drift = image.python_drift(spec)
    if drift:
        warnings.append(
            f"image.python {spec.image.python} is not the Python the local platform and its tests run "
            f"({platform.python_version()}); uv.lock resolves {len(drift)} packages differently "
            f"for it ({', '.join(drift[:4])}{' ...' if len(drift) > 4 else ''}): "
            + (
                "the image runs those versions (the base's patch level); the local platform runs the others"
                if spec.image.python_minor == f"{sys.version_info.major}.{sys.version_info.minor}"
                else "set image.python to match"
            )
        )
    serving_docs = serving_k8s.manifests(spec, secret_bundle.checksums.get(LOGIN_CHECKSUM))
    rendered_chart = render_chart(chart_obj, values, spec) if chart_obj is not None else None
    if rendered_chart is not None and "Kubernetes" in spec.airflow.executor:
        # Worker pods without the database URL and the keys: the chart's own template, those variables out.
        values["podTemplate"] = worker_pod_template(_chart_pod_template(rendered_chart))
        rendered_chart = render_chart(chart_obj, values, spec)
    elif "Kubernetes" in spec.airflow.executor:
        warnings.append(
            "rendered without the chart: values.yaml has no podTemplate, so with `helm install` of these values "
            "the worker pods get the metadata database URL and the Fernet key; `render --chart` (or "
            "kubernetes.chart) adds it, `deploy` always does"
        )

    out.mkdir(parents=True, exist_ok=True)
    (out / ".gitignore").write_text("# key material: never commit\nsecrets.yaml\n")
    (out / "values.yaml").write_text(
        f"# Helm values for the official Apache Airflow chart {spec.kubernetes.chart_version}, "
        "generated by airflow-gitops from platform.yaml.\n" + dump(values)
    )
    write_private(out / "secrets.yaml", dump_all(secret_bundle.secrets))
    (out / "manifests.yaml").write_text(dump_all(docs))
    if serving_docs:
        (out / "serving.yaml").write_text(dump_all(serving_docs))
    else:
        (out / "serving.yaml").unlink(missing_ok=True)  # serving turned off: no stale file to apply by hand
    image.write_folder(spec, out / "image")
    (out / "NOTES.md").write_text(
        NOTES.format(
            ns=spec.kubernetes.namespace,
            claim=f", the logs PVC `{spec.logs.existing_claim}`" if spec.logs.persistence else "",
            logs=_logs_note(spec),
            host=spec.ingress.host,
            image=f"{spec.image.repository}:{spec.image.tag}",
            mlflow=values["env"][0]["value"],
            state=spec.state_dir,
            chart=spec.kubernetes.chart_version,
            app_version=chart_obj.metadata.get("appVersion", "?") if chart_obj is not None else "3.2.0 for 1.21.0",
            airflow=image.airflow_version(),
            python=spec.image.python,
        )
    )
    chart_version = None
    if rendered_chart is not None:
        chart_version = chart_obj.version
        body = "".join(
            f"---\n# Source: {name}\n{text.strip()}\n"
            for name, text in sorted(rendered_chart.items())
            if name.endswith((".yaml", ".yml")) and text.strip()
        )
        # The chart can embed generated secrets of its own (e.g. a Redis password): keep it private.
        write_private(out / "chart.yaml", body)
    return Rendered(out, values, secret_bundle, docs, warnings, chart_version, serving_docs)


def render_command(spec: PlatformSpec, out: Path, *, chart: str | None, console) -> Rendered:
    r = render(spec, out, chart=chart)
    console.print(f"Rendered the Kubernetes target into {out}/:", highlight=False)
    for name, what in [
        ("values.yaml", f"values for the official chart {spec.kubernetes.chart_version}"),
        ("secrets.yaml", f"{len(r.secrets.secrets)} Secrets (0600, git-ignored; never printed)"),
        ("manifests.yaml", "namespace and logs PVC (ReadWriteMany)"),
        *(
            [
                (
                    "serving.yaml",
                    f"serving {spec.serving_model}@{spec.serving.alias}: "
                    + ", ".join(f"{d['kind']}/{d['metadata']['name']}" for d in r.serving),
                )
            ]
            if r.serving
            else []
        ),
        ("image/", f"Dockerfile, requirements.txt, constraints.txt (Airflow {image.airflow_version()}, from uv.lock)"),
        ("NOTES.md", "what you still create yourself"),
    ]:
        console.print(f"  {name:<15} {what}", highlight=False)
    if r.chart_version:
        console.print(f"  {'chart.yaml':<15} the whole chart {r.chart_version} rendered with these values")
    ns, admin = spec.kubernetes.namespace, spec.secrets.admin_password_secret
    console.print(
        f"Login: admin; the password is in Secret {ns}/{admin} (the same as STATE_DIR/secrets/admin_password):",
        highlight=False,
    )
    console.print(
        f"  kubectl -n {ns} get secret {admin} -o jsonpath='{{.data.password}}' | base64 -d; echo",
        highlight=False,
        soft_wrap=True,
    )
    for w in r.warnings:
        console.print(f"[yellow]warning:[/] {w}", highlight=False)
    if r.secrets.deploy_public_key:
        console.print("Deploy key (public half; add it read-only on the Git host's deploy-key page):", highlight=False)
        console.print(f"  {r.secrets.deploy_public_key}", highlight=False, soft_wrap=True)
    return r
