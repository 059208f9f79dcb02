"""The local target: the whole platform on this machine, under supervisor."""

from __future__ import annotations

from rich.console import Console

from ..errors import PlatformError
from ..fernetkeys import key_file, rotate_keys
from ..target import Target
from .platform import LocalPlatform


class LocalTarget(Target):
    name = "local"

    def __init__(self, spec):
        super().__init__(spec)
        self.platform = LocalPlatform(spec)

    def database_url(self) -> tuple[str | None, str]:
        if self.spec.database.url is not None:
            return self.spec.database.expanded_url(), ""
        if not self.platform.postgres.initialized:
            return None, "the local PostgreSQL does not exist yet: `up` creates it"
        return self.platform.postgres.url(), ""

    def rotate_fernet_key(self, console: Console) -> None:
        platform = self.platform
        if not platform.is_running():
            raise PlatformError(
                "the local platform is not running: the rotation needs its database",
                "`airflow-gitops up`, then run `airflow-gitops rotate-fernet-key` again",
            )
        rotate_keys(key_file(self.spec), platform.database_url(), platform.airflow_env(), console)
        console.print("Restarting the components so they run with the new key only ...")
        platform.down(console)
        platform.up(console)
