"""``airflow-gitops image build``: the users' image built without a Docker daemon, with ``buildah``.

The folder is the one ``render`` writes into ``image/`` (Dockerfile, requirements.txt, constraints.txt,
pinned from ``uv.lock``); buildah builds it as ``docker build`` would, tags it
``<image.repository>:<image.tag>``, writes an OCI archive and, when asked, pushes it (any transport
buildah accepts: ``docker://registry/repo:tag``, ``oci-archive:/path.tar``, ``docker-archive:...``).

buildah keeps its images in its own storage (``/var/lib/containers/storage`` for root, or what
``CONTAINERS_STORAGE_CONF`` names); ``--layers`` reuses the ``pip install`` layer when nothing changed.
The isolation is ``chroot`` (works inside a container, no runc needed) unless ``BUILDAH_ISOLATION`` says
otherwise; ``RUN`` steps share the host's network (``--network host``), which ``pip install`` needs
(measured here: ``oci`` isolation without it has no DNS; ``chroot`` 0.6 s, ``oci`` + host 0.4 s a step).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import PlatformError
from ..spec import PlatformSpec
from . import image

LOG_TAIL = 25


@dataclass(frozen=True)
class BuiltImage:
    ref: str
    archive: Path
    folder: Path
    log: Path
    pushed: str | None
    seconds: float


def buildah_exe() -> str:
    exe = shutil.which("buildah")
    if exe is None:
        raise PlatformError(
            "buildah is not installed (not on PATH): `image build` builds the image with it, without a Docker daemon",
            "apt-get install buildah (Debian/Ubuntu; dnf install buildah on Fedora); "
            "with Docker instead: airflow-gitops render, then docker build -t REPO:TAG rendered/image",
        )
    return exe


def _tail(log: Path, n: int = LOG_TAIL) -> str:
    lines = log.read_text(errors="replace").splitlines()
    return "\n".join("  " + ln for ln in lines[-n:])


def _run(cmd: list[str], log: Path, what: str, fix: str) -> None:
    """Run ``cmd`` with its output appended to ``log``; a failure is one PlatformError with the log's tail."""
    with log.open("a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        raise PlatformError(
            f"{what} failed (buildah exited with {proc.returncode}); the last lines of its log:\n{_tail(log)}",
            fix,
            log=str(log),
        )


def build(
    spec: PlatformSpec,
    out: Path,
    *,
    base: str | None = None,
    output: Path | None = None,
    push: str | None = None,
) -> BuiltImage:
    """Write ``out/image/``, build it with buildah, write the OCI archive, push when ``push`` is given."""
    exe = buildah_exe()
    t0 = time.monotonic()
    ref = f"{spec.image.repository}:{spec.image.tag}"
    folder = image.write_folder(spec, out / "image")
    archive = (output or out / "image.oci.tar").resolve()
    archive.parent.mkdir(parents=True, exist_ok=True)
    log = (out / "image-build.log").resolve()
    log.write_text("")
    # Docker reads apache/airflow as docker.io/apache/airflow; buildah resolves short names only through
    # registries.conf (Debian's has none), so the default base is passed fully qualified.
    base = base or f"docker.io/{image.official_base(spec)}"
    isolation = os.environ.get("BUILDAH_ISOLATION", "chroot")
    cmd = [exe, "build", "--layers", "--isolation", isolation, "--network", "host"]
    cmd += ["-f", str(folder / "Dockerfile"), "-t", ref, "--build-arg", f"BASE_IMAGE={base}"]
    _run(
        cmd + [str(folder)],
        log,
        f"building {ref} from {folder}",
        "read the log: a package that does not install, a base image that cannot be pulled "
        f"({base}; --base picks another) or no network for pip",
    )
    archive.unlink(missing_ok=True)
    _run(
        [exe, "push", ref, f"oci-archive:{archive}:{ref}"],
        log,
        f"writing the OCI archive {archive}",
        "check that the folder is writable and has space",
    )
    if push:
        _run(
            [exe, "push", ref, push],
            log,
            f"pushing {ref} to {push}",
            "check the destination (e.g. docker://REGISTRY/REPO:TAG) and your login (buildah login REGISTRY)",
        )
    return BuiltImage(ref, archive, folder, log, push, time.monotonic() - t0)


def build_command(
    spec: PlatformSpec,
    out: Path,
    *,
    base: str | None,
    output: Path | None,
    push: str | None,
    console,
) -> BuiltImage:
    console.print(f"Building {spec.image.repository}:{spec.image.tag} with buildah (log: {out}/image-build.log) ...")
    built = build(spec, out, base=base, output=output, push=push)
    console.print(f"Built {built.ref} in {built.seconds:.0f} s from {built.folder}/", highlight=False)
    console.print(f"  OCI archive: {built.archive}", highlight=False, soft_wrap=True)
    if built.pushed:
        console.print(f"  pushed to:   {built.pushed}", highlight=False, soft_wrap=True)
    return built
