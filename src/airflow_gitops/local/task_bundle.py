"""The DAG bundle as task and parse processes see it when they run as the task user (``local.task_user``).

Those processes are forked by the task user's zygote (``zygote.py``) and read only what the platform's
components prepared for them: ``GitDagBundle`` itself would take the bundle's lock file, run ``git reset
--hard`` / ``git clean`` in the version's worktree and rewrite the bare repository's remote, i.e. it needs
write access to files the platform's own processes (root) run git in - which would let DAG code change
what root executes next. Here the scheduler's task supervisor (root) checks the version out with
``GitDagBundle`` as Airflow always does, before it hands the task to the zygote (``patches/task_zygote``),
and makes it readable, not writable, to the task user's group; in the task process this class only points
at it. It is named in the zygote's own ``[dag_processor] dag_bundle_config_list`` (a public extension
point of Airflow: a ``BaseDagBundle`` subclass), so no Airflow code is patched on this side.
"""

from __future__ import annotations

from pathlib import Path

from airflow.dag_processing.bundles.base import BaseDagBundle

CLASSPATH = "airflow_gitops.local.task_bundle.PreparedGitBundle"


class PreparedGitBundle(BaseDagBundle):
    """A version (or the tracking worktree) of a ``GitDagBundle`` that root prepared under
    ``prepared_root/<name>/``; read-only here."""

    supports_versioning = True

    def __init__(self, *, prepared_root: str, subdir: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        base = Path(prepared_root) / self.name
        repo = base / "versions" / self.version if self.version else base / "tracking_repo"
        self._path = repo / subdir if subdir else repo

    @property
    def path(self) -> Path:
        return self._path

    def initialize(self) -> None:
        if not self._path.is_dir():
            raise RuntimeError(
                f"bundle {self.name} version {self.version or '(tracking)'} was not prepared at {self._path}: "
                "the platform's task supervisor checks it out before the task starts (see the scheduler's log)"
            )
        super().initialize()

    def get_current_version(self) -> str | None:
        return self.version

    def refresh(self) -> None:
        raise RuntimeError("a prepared bundle is read-only: the platform's components refresh the real one")
