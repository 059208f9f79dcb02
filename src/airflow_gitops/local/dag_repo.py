"""The local DAG repository: a bare Git repository in the state directory, seeded from the template.

Users push to it exactly as they would push to GitHub (``git push <state>/dags.git main``); Airflow's
GitDagBundle pulls from it. Seeding happens once: an existing repository is never touched.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from fnmatch import fnmatch
from pathlib import Path

from .. import contract
from ..errors import PlatformError
from .layout import Layout

AUTHOR = ["-c", "user.name=airflow-gitops", "-c", "user.email=airflow-gitops@localhost"]
# Build and test leftovers that may sit in the template folder of a checkout; never seeded.
SKIP = ("__pycache__", "*.pyc", ".pytest_cache", ".ruff_cache", ".hypothesis")


def template_files() -> dict[str, str]:
    """The DAG repository template as {relative path: text}, without build/test leftovers."""
    from ..dag_repo import template_dir

    root = template_dir()
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and not any(fnmatch(part, pat) for part in rel.parts for pat in SKIP):
            out[str(rel)] = path.read_text()
    return out


def git(*args: str, cwd: Path | None = None, stdin: str | None = None) -> str:
    if shutil.which("git") is None:
        raise PlatformError("git was not found", "install it: `sudo apt-get install -y git`")
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, input=stdin)
    if result.returncode != 0:
        raise PlatformError(f"git {' '.join(args[:2])} failed: {result.stderr.strip()}", "see the message above")
    return result.stdout.strip()


def ensure_probe_branch(layout: Layout) -> None:
    """The probe branch of the local repository (an empty tree; see contract.PROBE_BRANCH), if missing."""
    repo = str(layout.spec.local_repo)
    ref = f"refs/heads/{contract.PROBE_BRANCH}"
    if subprocess.run(["git", "-C", repo, "rev-parse", "-q", "--verify", ref], capture_output=True).returncode == 0:
        return
    empty_tree = git("-C", repo, "hash-object", "-t", "tree", "-w", "--stdin", stdin="")
    commit = git("-C", repo, *AUTHOR, "commit-tree", empty_tree, "-m", "airflow-gitops: the probe branch (no DAGs)")
    git("-C", repo, "update-ref", ref, commit)


def seed_local_repo(layout: Layout) -> bool:
    """Create and seed the bare repository when it does not exist yet. Returns True if it seeded."""
    from ..dag_repo import template_dir

    repo = layout.spec.local_repo
    if (repo / "HEAD").exists():
        return False
    branch = layout.spec.dags.branch
    repo.parent.mkdir(parents=True, exist_ok=True)
    git("init", "--quiet", "--bare", f"--initial-branch={branch}", str(repo))
    with tempfile.TemporaryDirectory(prefix="airflow-gitops-seed-") as tmp:
        work = Path(tmp) / "work"
        shutil.copytree(template_dir(), work, ignore=shutil.ignore_patterns(*SKIP))
        sub = layout.spec.dags.subdir
        if sub not in ("", "dags") and (work / "dags").is_dir():
            (work / sub).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(work / "dags", work / sub)
        git("init", "--quiet", f"--initial-branch={branch}", cwd=work)
        git("add", "-A", cwd=work)
        git(*AUTHOR, "commit", "--quiet", "-m", "Seed the DAG repository from the airflow-gitops template", cwd=work)
        git("push", "--quiet", str(repo), f"HEAD:refs/heads/{branch}", cwd=work)
    return True
