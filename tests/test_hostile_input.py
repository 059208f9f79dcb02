"""Hostile or broken input (platform.yaml, the file itself, init's target) fails with one short message.

Every case goes through the real CLI: exit code 1, no stack trace, the key path (or the file) named,
a message that does not grow with the input, and nothing created (no state dir, no output folder).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from airflow_gitops.cli import app
from airflow_gitops.spec import MAX_SPEC_BYTES, SpecError, load_spec, parse_spec
from airflow_gitops.spec import load as spec_load

MAX_MESSAGE = 2_000
TOKEN = "s3cr3tT0kenValue"


def _bomb() -> str:
    """'Billion laughs': 9 levels of 10 aliases each, 10**9 values once expanded."""
    lines = ["x0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"x{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    return "\n".join(lines) + "\nname: *a8\n"


# (id, file content, text the message must contain (the key path), a word of the fix)
CASES: list[tuple[str, str | bytes, str, str]] = [
    # 1. duplicate keys, at any level
    ("dup-top", "dags: {depth: 1}\naws: {}\ndags: {depth: 2}\n", "dags:", "lines 1 and 3"),
    ("dup-nested", "dags:\n  branch: main\n  depth: 1\n  branch: dev\n", "dags.branch", "lines 2 and 4"),
    ("dup-flow", "aws: {region: us-east-1, region: eu-west-1}\n", "aws.region", "lines 1 and 1"),
    (
        "dup-deep",
        "airflow:\n  config:\n    core: {parallelism: 1}\n    core: {parallelism: 2}\n",
        "airflow.config.core",
        "delete one",
    ),
    # 2. size, alias bombs, huge values echoed back
    ("too-big", "# padding\n" * (MAX_SPEC_BYTES // 10 + 1), "(file)", "1024 KiB"),
    ("alias-bomb", _bomb(), "expands to more than 10,000 values", "write the values out"),
    ("many-aliases", "s: &s x\nname: [" + ", ".join(["*s"] * 101) + "]\n", "name", "more than 100 aliases"),
    ("alias-cycle", "name: &a [x, *a]\n", "name.1", "cycle"),
    ("deep-nesting", "name: " + "[" * 5000 + "]" * 5000 + "\n", "nested more than 32 levels", "flatten"),
    (
        "many-values",
        "image: {extra_requirements: [" + ", ".join(["x"] * 20_000) + "]}\n",
        "more than 10,000",
        "shorten",
    ),
    ("huge-value", "dags: {depth: " + "x" * 200_000 + "}\n", "dags.depth", "valid integer"),
    ("huge-key", "? " + "k" * 200_000 + "\n: 1\n", "unknown key", "spelling"),
    ("many-unknown-keys", "".join(f"k{i}: 1\n" for i in range(3000)), "and 2980 more", "spelling"),
    ("huge-int", "dags: {depth: " + "9" * 5000 + "}\n", "dags.depth", "cannot be read"),
    ("bad-date", "name: 2024-13-45\n", "name", "month must be in 1..12"),
    # 3. not text
    ("binary", bytes(range(256)) * 4, "(file)", "save it as UTF-8"),
    ("utf-16", "dags: {depth: 1}\n".encode("utf-16"), "(file)", "save it as UTF-8"),
    ("utf-16-no-bom", "dags: {depth: 1}\n".encode("utf-16-le"), "(file)", "save it as UTF-8"),
    ("latin-1", "name: caf\xe9\n".encode("latin-1"), "(file)", "save it as UTF-8"),
    ("control-char", "dags: {depth: 1}\nname: a\x01b\n", "line 2", "control character"),
    # 6. other hostile shapes
    ("python-tag", "name: !!python/object/apply:os.system ['echo pwned']\n", "name", "not allowed"),
    ("top-level-list", "- dags\n- aws\n", "(top level)", "mapping"),
    ("top-level-scalar", "just text\n", "(top level)", "mapping"),
    ("int-key", "1: x\n", "1", "keys must be text"),
    ("number-for-mapping", "dags: 5\n", "dags", "must be a mapping"),
    ("two-documents", "dags: {}\n---\naws: {}\n", "line", "single document"),
    # 5. validation gaps
    ("branch-newline", 'dags: {branch: "main\\nx"}\n', "dags.branch", "check-ref-format"),
    ("branch-control", 'dags: {branch: "ma\\tin"}\n', "dags.branch", "check-ref-format"),
    ("branch-space", "dags: {branch: 'feature x'}\n", "dags.branch", "check-ref-format"),
    ("branch-tilde", "dags: {branch: 'main~1'}\n", "dags.branch", "check-ref-format"),
    ("branch-at-brace", "dags: {branch: 'main@{1}'}\n", "dags.branch", "check-ref-format"),
    ("branch-long", "dags: {branch: " + "b" * 256 + "}\n", "dags.branch", "255"),
    ("depth-huge", "dags: {depth: 1000000001}\n", "dags.depth", "1000000"),
    ("aws-profile-newline", 'aws: {profile: "dev\\n[default]"}\n', "aws.profile", "letters"),
    ("aws-profile-bracket", "aws: {profile: 'dev]x'}\n", "aws.profile", "letters"),
    ("state-dir-newline", 'local: {state_dir: "st\\nate"}\n', "local.state_dir", "control character"),
    ("state-dir-nul", 'local: {state_dir: "st\\0ate"}\n', "local.state_dir", "control character"),
    ("state-dir-percent", "local: {state_dir: 'st%(here)sate'}\n", "local.state_dir", "'%'"),
    ("state-dir-root", "local: {state_dir: /}\n", "local.state_dir", "system folder"),
    ("state-dir-etc", "local: {state_dir: /etc}\n", "local.state_dir", "system folder"),
    ("state-dir-usr", "local: {state_dir: /usr/}\n", "local.state_dir", "system folder"),
    ("state-dir-proc", "local: {state_dir: /proc/self}\n", "local.state_dir", "system folder"),
    ("secrets-dir-newline", 'secrets: {dir: "sec\\nrets"}\n', "secrets.dir", "control character"),
    ("secrets-dir-percent", "secrets: {dir: 'se%crets'}\n", "secrets.dir", "'%'"),
    ("secrets-dir-up", "secrets: {dir: ../keys}\n", "secrets.dir", "inside the state dir"),
    ("secrets-dir-absolute", "secrets: {dir: /var/tmp/keys}\n", "secrets.dir", "inside the state dir"),
    (
        "secret-names-collide",
        "secrets: {aws_secret: same, git_ssh_secret: same}\n",
        "secrets.aws_secret",
        "secrets.git_ssh_secret",
    ),
    (
        "tls-secret-collides",
        "ingress: {tls_secret: airflow-metadata}\n",
        "ingress.tls_secret",
        "secrets.metadata_secret",
    ),
    ("ssh-key-newline", 'dags: {ssh_key_file: "key\\nfile"}\n', "dags.ssh_key_file", "control character"),
    ("known-hosts-nul", 'dags: {known_hosts_file: "kh\\0"}\n', "dags.known_hosts_file", "control character"),
    ("aws-credentials-newline", 'aws: {credentials_file: "cr\\neds"}\n', "aws.credentials_file", "control character"),
    ("aws-config-nul", 'aws: {config_file: "con\\0fig"}\n', "aws.config_file", "control character"),
    ("ssh-key-space", "dags: {ssh_key_file: 'my key'}\n", "dags.ssh_key_file", "GIT_SSH_COMMAND"),
    ("known-hosts-quote", "dags: {known_hosts_file: 'k\"h'}\n", "dags.known_hosts_file", "unquoted"),
    ("ssh-key-semicolon", "dags: {ssh_key_file: 'k;touch x'}\n", "dags.ssh_key_file", "unquoted"),
    (
        "repo-https-token",
        f"dags: {{repo: 'https://user:{TOKEN}@github.com/org/dags.git'}}\n",
        "dags.repo",
        "deploy key",
    ),
    (
        "repo-https-token-user",
        f"dags: {{repo: 'https://ghp_{TOKEN}@github.com/org/dags.git'}}\n",
        "dags.repo",
        "credential helper",
    ),
    ("repo-scp-token", f"dags: {{repo: 'user:{TOKEN}@github.com/org/dags.git'}}\n", "dags.repo", "not a Git URL"),
    ("repo-newline", 'dags: {repo: "https://example.com/org/dags.git\\nx"}\n', "dags.repo", "https://host"),
    ("repo-space", "dags: {repo: 'https://example.com/org/my dags.git'}\n", "dags.repo", "whitespace"),
    ("repo-dash-host", "dags: {repo: 'ssh://-oProxyCommand=x/org/dags.git'}\n", "dags.repo", "option"),
    ("database-url-bad-ref", "database: {url: 'postgresql://u:${PW@h/db'}\n", "database.url", "%24"),
    ("database-url-newline", 'database: {url: "postgresql://u:p@h/db\\nx"}\n', "database.url", "control character"),
    ("endpoint-newline", 'aws: {endpoint_url: "http://s3\\n[default]"}\n', "aws.endpoint_url", "without spaces"),
    ("tracking-uri-space", "mlflow: {tracking_uri: 'http://a b'}\n", "mlflow.tracking_uri", "MLflow"),
    ("sub-path-newline", 'dags: {sub_path: "da\\ngs"}\n', "dags.sub_path", "control character"),
]


def _invoke(args: list[str]):
    return CliRunner().invoke(app, args)


def _assert_clean_failure(result, tmp_path: Path, *needles: str) -> str:
    out = result.output
    assert result.exit_code == 1, out
    # CliRunner turns an uncaught exception into exit code 1 too: it must be the CLI's own exit.
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in out
    assert len(out) < MAX_MESSAGE, f"{len(out)} characters: {out[:300]}"
    for needle in needles:
        assert needle in out, out
    assert not (tmp_path / ".airflow-gitops").exists()
    assert not (tmp_path / "out").exists()
    return out


@pytest.mark.parametrize(("content", "key", "fix"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_platform_yaml_fails_cleanly(tmp_path, monkeypatch, content, key, fix):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "platform.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    start = time.monotonic()
    result = _invoke(["render", "-f", str(path), "--out", str(tmp_path / "out")])
    elapsed = time.monotonic() - start
    out = _assert_clean_failure(result, tmp_path, key, fix)
    assert TOKEN not in out
    assert elapsed < 5, f"took {elapsed:.1f} s"


def test_alias_bomb_fails_in_well_under_a_second(tmp_path):
    path = tmp_path / "platform.yaml"
    path.write_text(_bomb())
    start = time.monotonic()
    with pytest.raises(SpecError, match="expands to more than"):
        load_spec(path)
    assert time.monotonic() - start < 1


def test_big_file_is_refused_before_it_is_read(tmp_path, monkeypatch):
    path = tmp_path / "platform.yaml"
    with path.open("wb") as f:  # sparse: 50 MB without writing them
        f.truncate(50 * 1024 * 1024)
    read = []
    monkeypatch.setattr(spec_load.os, "fdopen", lambda *a, **k: read.append(a) or open(*a, **k))
    start = time.monotonic()
    with pytest.raises(SpecError, match="larger than 1024 KiB"):
        load_spec(path)
    assert time.monotonic() - start < 1 and not read


def test_directory_as_file(tmp_path):
    (tmp_path / "conf").mkdir()
    result = _invoke(["render", "-f", str(tmp_path / "conf"), "--out", str(tmp_path / "out")])
    _assert_clean_failure(result, tmp_path, "is a folder", str(tmp_path / "conf" / "platform.yaml"))


def test_parent_is_a_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    result = _invoke(["render", "-f", str(tmp_path / "afile" / "platform.yaml"), "--out", str(tmp_path / "out")])
    _assert_clean_failure(result, tmp_path, "not found", "airflow-gitops init")


def test_named_pipe_does_not_hang(tmp_path):
    fifo = tmp_path / "platform.yaml"
    os.mkfifo(fifo)
    start = time.monotonic()
    result = _invoke(["render", "-f", str(fifo), "--out", str(tmp_path / "out")])
    _assert_clean_failure(result, tmp_path, "not a regular file")
    assert time.monotonic() - start < 5


def test_unreadable_file(tmp_path, monkeypatch):
    path = tmp_path / "platform.yaml"
    path.write_text("dags: {}\n")
    if os.geteuid() != 0:  # root reads anything: simulate the refusal then
        path.chmod(0)
    else:
        real_open = os.open

        def refuse(p, *a, **k):
            if Path(p) == path:
                raise PermissionError(13, "Permission denied", str(p))
            return real_open(p, *a, **k)

        monkeypatch.setattr(spec_load.os, "open", refuse)
    result = _invoke(["render", "-f", str(path), "--out", str(tmp_path / "out")])
    _assert_clean_failure(result, tmp_path, "permission denied", "chmod u+r")


def test_state_dir_is_the_home_folder(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    with pytest.raises(SpecError, match="home folder itself") as err:
        parse_spec({"local": {"state_dir": "~"}}, base_dir=tmp_path)
    assert err.value.problems[0][0] == "local.state_dir"


def test_ssh_paths_resolved_against_a_folder_with_a_space(tmp_path):
    conf = tmp_path / "my conf"
    conf.mkdir()
    with pytest.raises(SpecError, match="GIT_SSH_COMMAND") as err:
        parse_spec({"dags": {"ssh_key_file": "deploy_key"}}, base_dir=conf)
    assert err.value.problems[0][0] == "dags.ssh_key_file"


def test_valid_values_still_pass(tmp_path):
    spec = parse_spec(
        {
            "dags": {"branch": "feature/new-dags", "depth": 0, "repo": "https://git.example.com/org/dags.git"},
            "aws": {"profile": "team.prod+1_a-b"},
            "local": {"state_dir": "state"},
            "secrets": {"dir": "keys/inner"},
            "database": {"url": "postgresql://airflow:${TEST_HOSTILE_PW}@db:5432/airflow"},
        },
        base_dir=tmp_path,
    )
    assert spec.secrets_dir == tmp_path / "state" / "keys" / "inner"
    # A few aliases and merge keys (a key overriding a merged one is not a duplicate) still work.
    path = tmp_path / "platform.yaml"
    path.write_text(
        "kubernetes: {namespace: &ns ns1, release: *ns}\n"
        "airflow: {config: {core: &core {default_task_retries: 8}, scheduler: {<<: *core, default_task_retries: 4}}}\n"
    )
    loaded = load_spec(path)
    assert loaded.kubernetes.release == "ns1" and loaded.airflow.config["scheduler"] == {"default_task_retries": 4}


def test_database_url_partial_reference_resolves_every_variable(monkeypatch):
    db = parse_spec({"database": {"url": "postgresql://${TEST_HOSTILE_USER}:${TEST_HOSTILE_PW}@db/airflow"}}).database
    monkeypatch.delenv("TEST_HOSTILE_USER", raising=False)
    monkeypatch.delenv("TEST_HOSTILE_PW", raising=False)
    with pytest.raises(SpecError) as err:
        db.resolved_url()
    assert "${TEST_HOSTILE_USER}, ${TEST_HOSTILE_PW}" in err.value.render() and "not set" in err.value.render()
    monkeypatch.setenv("TEST_HOSTILE_USER", "airflow")
    monkeypatch.setenv("TEST_HOSTILE_PW", "p%40ss")
    assert db.resolved_url() == "postgresql://airflow:p%40ss@db/airflow"
    # A value is not expanded again, and never becomes a literal '${...}' password.
    monkeypatch.setenv("TEST_HOSTILE_PW", "${OTHER}")
    with pytest.raises(SpecError, match="%24"):
        db.resolved_url()
    # The resolved URL is validated like a literal one, without echoing the password.
    monkeypatch.setenv("TEST_HOSTILE_PW", "p@ss@word")
    with pytest.raises(SpecError, match="%40") as err:
        db.resolved_url()
    assert "p@ss@word" not in err.value.render()


def test_database_url_partial_reference_unset_via_cli(tmp_path, monkeypatch):
    monkeypatch.delenv("TEST_HOSTILE_PW", raising=False)
    path = tmp_path / "platform.yaml"
    path.write_text("database: {url: 'postgresql://airflow:${TEST_HOSTILE_PW}@db:5432/airflow'}\n")
    result = _invoke(["render", "-f", str(path), "--out", str(tmp_path / "out")])
    _assert_clean_failure(result, tmp_path, "database.url", "${TEST_HOSTILE_PW}", "not set")


# --- init ----------------------------------------------------------------------------------------


def test_init_into_a_file(tmp_path):
    target = tmp_path / "afile"
    target.write_text("keep me")
    result = _invoke(["init", str(target)])
    _assert_clean_failure(result, tmp_path, "is a file", "airflow-gitops init DIR")
    assert target.read_text() == "keep me"


def test_init_under_a_file(tmp_path):
    (tmp_path / "afile").write_text("keep me")
    result = _invoke(["init", str(tmp_path / "afile" / "sub")])
    _assert_clean_failure(result, tmp_path, "is a file", "a parent of")
    assert (tmp_path / "afile").read_text() == "keep me"


def test_init_force_does_not_follow_a_symlink(tmp_path):
    real = tmp_path / "elsewhere.yaml"
    real.write_text("keep me\n")
    project = tmp_path / "project"
    project.mkdir()
    (project / "platform.yaml").symlink_to(real)
    result = _invoke(["init", str(project), "--force"])
    _assert_clean_failure(result, tmp_path, "symbolic link", "remove the link")
    assert real.read_text() == "keep me\n" and (project / "platform.yaml").is_symlink()
    assert not (project / ".gitignore").exists()


def test_init_does_not_write_through_a_dangling_symlink(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "platform.yaml").symlink_to(tmp_path / "created-elsewhere.yaml")
    result = _invoke(["init", str(project)])
    _assert_clean_failure(result, tmp_path, "symbolic link")
    assert not (tmp_path / "created-elsewhere.yaml").exists()


def test_init_writes_nothing_when_the_folder_makes_the_template_invalid(tmp_path):
    project = tmp_path / "50%off"
    result = _invoke(["init", str(project)])
    _assert_clean_failure(result, tmp_path, "local.state_dir", "'%'")
    assert not project.exists()
