"""platform.yaml's connections, variables and pools without a running platform: validation (one line per
key path, never a secret value), reference resolution (${VAR}, from_file), the provider look-up, and the
Kubernetes render (a Secret read through the chart's `secret` list; pools through the create-user job)."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from k8s_specs import CHART_TGZ, platform, shared_file
from test_kubernetes_render import chart_schema, validate_k8s
from typer.testing import CliRunner

from airflow_gitops import contract, managed, providers
from airflow_gitops.cli import app
from airflow_gitops.kubernetes.render import render
from airflow_gitops.spec import SpecError, parse_spec

runner = CliRunner()
AIRFLOW_PODS = ("airflow-scheduler", "airflow-dag-processor", "airflow-triggerer", "airflow-api-server")


def declared(tmp: Path, token: str) -> dict:
    """The brief's example: a password by ${VAR}, a token from a file, a plain variable, a pool."""
    (tmp / "secrets").mkdir(exist_ok=True)
    (tmp / "secrets" / "api_token").write_text(token + "\n")
    (tmp / "secrets" / "api_token").chmod(0o600)
    return {
        "connections": {
            "warehouse": {
                "conn_type": "postgres",
                "host": "db.internal",
                "login": "etl",
                "password": "${WAREHOUSE_PASSWORD}",
                "schema": "analytics",
                "port": 5432,
            },
            "s3_data": {"conn_type": "aws", "extra": {"region_name": "us-east-1"}},
        },
        "variables": {"model_threshold": "0.9", "api_token": {"from_file": "secrets/api_token"}, "cfg": {"a": [1]}},
        "pools": {"training": {"slots": 2, "description": "GPU-less training slots"}},
    }


def problems(data: dict, tmp: Path) -> dict[str, str]:
    with pytest.raises(SpecError) as err:
        parse_spec(data, base_dir=tmp)
    return dict(err.value.problems)


# --- validation --------------------------------------------------------------------------------------------
def test_the_example_parses_and_names_its_secret_file(tmp_path):
    spec = parse_spec(declared(tmp_path, "x"), base_dir=tmp_path)
    assert spec.connections["warehouse"].schema == "analytics"
    assert spec.declared_files() == {"variables.api_token": tmp_path / "secrets" / "api_token"}
    assert contract.declared_env_names(spec) == [
        "AIRFLOW_CONN_S3_DATA",
        "AIRFLOW_CONN_WAREHOUSE",
        "AIRFLOW_VAR_API_TOKEN",
        "AIRFLOW_VAR_CFG",
        "AIRFLOW_VAR_MODEL_THRESHOLD",
    ]


def test_unknown_conn_type_suggests_the_closest_installed_one(tmp_path):
    found = problems({"connections": {"w": {"conn_type": "postgresql"}, "s": {"conn_type": "s3"}}}, tmp_path)
    assert "did you mean 'postgres'" in found["connections.w.conn_type"]
    assert "did you mean 'aws'" in found["connections.s.conn_type"]
    assert "apache-airflow-providers-" in found["connections.w.conn_type"]


def test_connection_types_come_from_the_installed_providers_without_importing_airflow():
    code = (
        "import sys; from airflow_gitops import providers as p; t = p.connection_types(); "
        "print(sorted(t)); print(any(m == 'airflow' or m.startswith('airflow.') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert {"postgres", "aws", "http", "git", "generic"} <= set(eval(out[0]))  # noqa: S307 - our own print
    assert out[1] == "False"
    assert providers.connection_types()["postgres"] == "apache-airflow-providers-postgres"


def _conn(conn_type: str, **fields) -> dict:
    return {"connections": {"c": {"conn_type": conn_type, **fields}}}


INLINE = [
    (_conn("postgres", password="VALUE"), "connections.c.password", "${C_PASSWORD}"),
    (_conn("postgres", password=123456789), "connections.c.password", "${C_PASSWORD}"),
    (
        _conn("http", extra={"headers": {"Authorization": "VALUE"}}),
        "connections.c.extra.headers.Authorization",
        "${C_HEADERS_AUTHORIZATION}",
    ),
    (_conn("aws", extra={"aws_secret_access_key": "VALUE"}), "connections.c.extra.aws_secret_access_key", "from_file"),
    ({"variables": {"api_token": "VALUE"}}, "variables.api_token", "${API_TOKEN}"),
    ({"variables": {"storage_account_key": "VALUE"}}, "variables.storage_account_key", "from_file"),
    ({"variables": {"cfg": {"db": {"password": "VALUE"}}}}, "variables.cfg.db.password", "${CFG_DB_PASSWORD}"),
]


@pytest.mark.parametrize(("data", "path", "hint"), INLINE)
def test_a_secret_given_inline_is_refused_naming_the_reference_to_use(tmp_path, data, path, hint):
    value = secrets.token_urlsafe(12)
    data = json.loads(json.dumps(data).replace('"VALUE"', json.dumps(value)).replace("123456789", "987654321"))
    with pytest.raises(SpecError) as err:
        parse_spec(data, base_dir=tmp_path)
    message = str(err.value)
    assert f"{path}: is a secret given inline" in message and hint in message and "from_file" in message
    assert value not in message and "987654321" not in message


def test_secret_looking_names_with_references_numbers_or_flags_are_fine(tmp_path):
    spec = parse_spec(
        {
            "connections": {
                "h": {
                    "conn_type": "http",
                    "password": {"from_file": "pw"},
                    "extra": {"token": "${TOKEN}", "use_token": True, "token_ttl": 3600, "key_file": "/k"},
                }
            },
            "variables": {"api_token": "${API_TOKEN}", "monkey": "banana"},
        },
        base_dir=tmp_path,
    )
    assert spec.connections["h"].extra["use_token"] is True


def test_other_invalid_declarations_name_their_key_path(tmp_path):
    found = problems(
        {
            "connections": {
                "warehouse": {"conn_type": "postgres"},
                "Warehouse": {"conn_type": "postgres"},
                "airflow_gitops_dags": {"conn_type": "git"},
            },
            "variables": {"x": "${OK}"},
            "pools": {"default_pool": {"slots": 1}},
        },
        tmp_path,
    )
    assert (
        "only in case" in found["connections.Warehouse"] and "AIRFLOW_CONN_WAREHOUSE" in found["connections.Warehouse"]
    )
    assert "pick another id" in found["connections.airflow_gitops_dags"]
    assert "default_pool_task_slot_count" in found["pools.default_pool"]
    found = problems({"variables": {"y": "${ broken"}}, tmp_path)
    assert "${NAME}" in found["variables.y"]
    found = problems(
        {
            "connections": {"bad-id": {"conn_type": "aws"}, "p": {"conn_type": "aws", "port": 0, "hots": "x"}},
            "variables": {"v": None, "f": {"from_file": "a", "mode": 1}},
            "pools": {"p": {"slots": -2}, "q": {"description": "no slots"}},
        },
        tmp_path,
    )
    assert "not a valid connection id" in found["connections.bad-id"]
    assert "greater than or equal to 1" in found["connections.p.port"]
    assert "unknown key" in found["connections.p.hots"]
    assert "has no value" in found["variables.v"] and "exactly {from_file: PATH}" in found["variables.f"]
    assert "greater than or equal to -1" in found["pools.p.slots"] and "required" in found["pools.q.slots"].lower()


def test_a_connection_written_as_a_uri_is_refused_without_echoing_it(tmp_path):
    uri = f"postgres://etl:{secrets.token_urlsafe(12)}@db/analytics"
    found = problems({"connections": {"w": uri}}, tmp_path)
    assert "must be a mapping" in found["connections.w"] and uri not in str(found)
    found = problems({"connections": {"w": {"conn_type": "http", "host": uri.replace("postgres", "https")}}}, tmp_path)
    assert "password in the URL" in found["connections.w.host"] and "etl:" not in found["connections.w.host"]


def test_invalid_declarations_through_the_cli_one_line_each_no_traceback(tmp_path):
    value = secrets.token_urlsafe(12)
    spec_file = tmp_path / "platform.yaml"
    spec_file.write_text(
        yaml.safe_dump(
            {
                "connections": {"w": {"conn_type": "postgresql", "password": value}},
                "variables": {"api_token": value},
            }
        )
    )
    for verb in (["sync"], ["status"], ["render", "-o", str(tmp_path / "out")]):
        result = runner.invoke(app, [*verb, "-f", str(spec_file)])
        assert result.exit_code == 1, result.output
        assert "Traceback" not in result.output and value not in result.output
        assert "connections.w.conn_type" in result.output and "did you mean 'postgres'" in result.output
    assert not (tmp_path / ".airflow-gitops").exists() and not (tmp_path / "out").exists()


def test_an_unquoted_reference_in_flow_style_gets_a_hint(tmp_path):
    spec_file = tmp_path / "platform.yaml"
    spec_file.write_text("connections:\n  w: {conn_type: postgres, password: ${WAREHOUSE_PASSWORD}, schema: a}\n")
    result = runner.invoke(app, ["status", "-f", str(spec_file)])
    assert result.exit_code == 1 and "not valid YAML" in result.output
    assert "password: '${DB_PASSWORD}'" in result.output and "Traceback" not in result.output


# --- resolution --------------------------------------------------------------------------------------------
def test_references_resolve_when_applying_and_secrets_are_listed(tmp_path):
    token, password = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    spec = parse_spec(declared(tmp_path, token), base_dir=tmp_path)
    d = managed.resolve(spec, {"WAREHOUSE_PASSWORD": password})
    assert d.connections["warehouse"].password == password
    assert d.variables["api_token"].value == token  # the file's trailing newline is not part of it
    assert d.variables["model_threshold"].value == "0.9" and d.variables["cfg"].value == '{"a": [1]}'
    assert set(d.secrets) == {token, password}
    assert d.pools["training"].fields()["description"] == "GPU-less training slots " + managed.MARKER
    conn = json.loads(d.env()["AIRFLOW_CONN_WAREHOUSE"])
    assert conn == {
        "conn_type": "postgres",
        "host": "db.internal",
        "login": "etl",
        "password": password,
        "schema": "analytics",
        "port": 5432,
    }
    assert json.loads(d.env()["AIRFLOW_CONN_S3_DATA"]) == {"conn_type": "aws", "extra": {"region_name": "us-east-1"}}


def test_unset_variable_and_missing_or_untrusted_files_are_one_line_each(tmp_path):
    spec = parse_spec(
        {
            "connections": {"w": {"conn_type": "postgres", "password": "${NO_SUCH_VAR_XYZ}", "host": "${ALSO_UNSET}"}},
            "variables": {
                "missing": {"from_file": "nope/token"},
                "linked": {"from_file": "link"},
                "folder": {"from_file": "adir"},
            },
        },
        base_dir=tmp_path,
    )
    (tmp_path / "real").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "adir").mkdir()
    with pytest.raises(SpecError) as err:
        managed.resolve(spec, {})
    found = dict(err.value.problems)
    assert "${NO_SUCH_VAR_XYZ}" in found["connections.w.password"] and "export it" in found["connections.w.password"]
    assert "${ALSO_UNSET}" in found["connections.w.host"]
    assert (
        "does not exist" in found["variables.missing"]
        and str(tmp_path / "nope" / "token") in found["variables.missing"]
    )
    assert "symbolic link" in found["variables.linked"]
    assert "not a regular file" in found["variables.folder"]
    assert "nothing was applied" in err.value.render()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file another owner")
def test_a_from_file_owned_by_another_user_is_refused(tmp_path):
    (tmp_path / "token").write_text("x")
    os.chown(tmp_path / "token", 12345, -1)
    spec = parse_spec({"variables": {"api_token": {"from_file": "token"}}}, base_dir=tmp_path)
    with pytest.raises(SpecError) as err:
        managed.resolve(spec, {})
    assert "owned by another user" in dict(err.value.problems)["variables.api_token"]


def test_render_and_doctor_name_the_unset_variable(tmp_path):
    data = platform(tmp_path)
    data["connections"] = {"w": {"conn_type": "postgres", "password": "${UNSET_FOR_RENDER}"}}
    spec_file = tmp_path / "platform.yaml"
    spec_file.write_text(yaml.safe_dump(data))
    result = runner.invoke(app, ["render", "-f", str(spec_file), "-o", str(tmp_path / "out")])
    assert result.exit_code == 1 and "connections.w.password" in result.output and "UNSET_FOR_RENDER" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["doctor", "--target", "kubernetes", "--json", "-f", str(spec_file)])
    rows = {r["name"]: r for r in json.loads(result.stdout)["checks"]}
    assert rows["declared.refs"]["status"] == "fail" and "UNSET_FOR_RENDER" in rows["declared.refs"]["saw"]


# --- Kubernetes ----------------------------------------------------------------------------------------------
def test_kubernetes_render_puts_connections_and_variables_into_a_secret_never_values(tmp_path, monkeypatch):
    token, password = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    monkeypatch.setenv("WAREHOUSE_PASSWORD", password)
    data = {**platform(tmp_path), **declared(tmp_path, token)}
    spec = parse_spec(data, base_dir=tmp_path)
    r = render(spec, tmp_path / "out")
    out = tmp_path / "out"
    values_text = (out / "values.yaml").read_text()
    for secret in (token, password):
        assert secret not in values_text and secret not in (out / "manifests.yaml").read_text()
        assert any(secret in v for v in r.secrets.values())
    assert "AIRFLOW_CONN_WAREHOUSE" in values_text and "db.internal" not in values_text  # names only
    jsonschema.validate(yaml.safe_load(values_text), chart_schema())
    validate_k8s(out / "secrets.yaml", out / "manifests.yaml")

    docs = {d["metadata"]["name"]: d for d in yaml.safe_load_all((out / "secrets.yaml").read_text())}
    data_ = docs["airflow-connections"]["stringData"]
    assert sorted(data_) == contract.secret_keys(spec)["airflow-connections"] == contract.declared_env_names(spec)
    assert json.loads(data_["AIRFLOW_CONN_WAREHOUSE"])["password"] == password
    assert data_["AIRFLOW_VAR_API_TOKEN"] == token and data_["AIRFLOW_VAR_MODEL_THRESHOLD"] == "0.9"
    assert {
        "envName": "AIRFLOW_VAR_API_TOKEN",
        "secretName": "airflow-connections",
        "secretKey": "AIRFLOW_VAR_API_TOKEN",
    } in r.values["secret"]
    # Pools: the create-user job imports them (names, slots, descriptions: no secret).
    job = r.values["createUserJob"]
    pools = json.loads(next(e["value"] for e in job["env"] if e["name"] == "AIRFLOW_GITOPS_POOLS"))
    assert pools == {
        "training": {
            "slots": 2,
            "description": "GPU-less training slots " + managed.MARKER,
            "include_deferred": False,
        }
    }
    script = job["args"][-1]
    assert "airflow pools import" in script and '"pools", "delete"' in script and "{{" not in script


def test_kubernetes_pods_roll_when_a_declared_value_changes_and_the_checksum_reveals_nothing(tmp_path, monkeypatch):
    data = {**platform(tmp_path), **declared(tmp_path, "t" * 20)}
    spec = parse_spec(data, base_dir=tmp_path)
    sums = []
    for password in ("first-" + secrets.token_urlsafe(8), "second-" + secrets.token_urlsafe(8)):
        monkeypatch.setenv("WAREHOUSE_PASSWORD", password)
        r = render(spec, tmp_path / "out")
        sums.append(r.values["airflowPodAnnotations"]["airflow-gitops/connections-checksum"])
        assert password not in (tmp_path / "out" / "values.yaml").read_text()
    assert sums[0] != sums[1] and render(spec, tmp_path / "out").values["airflowPodAnnotations"] == {
        "airflow-gitops/connections-checksum": sums[1]
    }
    env = managed.resolve(spec).env()
    assert hashlib.sha256(json.dumps(env, sort_keys=True).encode()).hexdigest()[:32] != sums[1]


def test_kubernetes_without_declarations_has_no_connections_secret(tmp_path):
    spec = parse_spec(platform(tmp_path), base_dir=tmp_path)
    r = render(spec, tmp_path / "out")
    assert "airflow-connections" not in {s["metadata"]["name"] for s in r.secrets.secrets}
    assert "airflow-connections" not in contract.secret_keys(spec)
    assert "airflowPodAnnotations" not in r.values
    # An emptied `pools:` still runs the pool step: it deletes the pools it managed.
    assert next(e["value"] for e in r.values["createUserJob"]["env"] if e["name"] == "AIRFLOW_GITOPS_POOLS") == "{}"


def test_kubernetes_chart_renders_the_pool_step_and_the_env_on_every_pod(tmp_path, monkeypatch):
    tgz = shared_file(CHART_TGZ)  # under CI a missing chart fails with the reason
    monkeypatch.setenv("WAREHOUSE_PASSWORD", "x" * 20)
    data = {**platform(tmp_path), **declared(tmp_path, "t" * 20)}
    data["pools"]["training"]["description"] = "braces {{ .Values }} stay text"
    render(parse_spec(data, base_dir=tmp_path), tmp_path / "out", chart=str(tgz))
    docs = [d for d in yaml.safe_load_all((tmp_path / "out" / "chart.yaml").read_text()) if d]
    job = next(d for d in docs if d["kind"] == "Job" and d["metadata"]["name"].endswith("create-user"))
    (container,) = job["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert "braces {{ .Values }} stay text" in json.loads(env["AIRFLOW_GITOPS_POOLS"])["training"]["description"]
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet") and d["metadata"]["name"].startswith(AIRFLOW_PODS):
            names = {e["name"] for e in d["spec"]["template"]["spec"]["containers"][0].get("env") or []}
            assert {"AIRFLOW_CONN_WAREHOUSE", "AIRFLOW_VAR_API_TOKEN"} <= names, d["metadata"]["name"]


# --- mlflow.username / mlflow.password: the login for the user's own MLflow server --------------------
ML_URI = "http://mlflow.internal:5000"


def test_an_inline_mlflow_password_is_refused_and_never_echoed(tmp_path):
    value = secrets.token_urlsafe(12)
    with pytest.raises(SpecError) as err:
        parse_spec({"mlflow": {"tracking_uri": ML_URI, "username": "u", "password": value}}, base_dir=tmp_path)
    message = str(err.value)
    assert "mlflow.password: is a secret given inline" in message and "${MLFLOW_TRACKING_PASSWORD}" in message
    assert value not in message


@pytest.mark.parametrize(
    ("mlflow", "said"),
    [
        ({"tracking_uri": ML_URI, "username": "u"}, "mlflow.username is set but mlflow.password is not"),
        ({"tracking_uri": ML_URI, "password": "${P}"}, "mlflow.password is set but mlflow.username is not"),
        ({"username": "u", "password": "${P}"}, "mlflow.tracking_uri is not set"),
        ({"tracking_uri": ML_URI, "username": "u:x", "password": "${P}"}, "is not an MLflow user name"),
        ({"tracking_uri": ML_URI, "username": " u", "password": "${P}"}, "is not an MLflow user name"),
    ],
)
def test_an_mlflow_login_needs_both_halves_and_its_own_server(tmp_path, mlflow, said):
    with pytest.raises(SpecError) as err:
        parse_spec({"mlflow": mlflow}, base_dir=tmp_path)
    assert said in str(err.value) and len(err.value.problems) == 1


def test_the_mlflow_login_resolves_from_the_environment_or_a_file_and_is_hidden_from_components(tmp_path):
    from airflow_gitops.checks.declared import resolve_checks

    password = secrets.token_urlsafe(16)
    by_env = parse_spec(
        {"mlflow": {"tracking_uri": ML_URI, "username": "u", "password": "${ML_PW}"}}, base_dir=tmp_path
    )
    got = managed.resolve(by_env, {"ML_PW": password})
    assert got.mlflow_login == ("u", password) and password in got.secrets
    assert "ML_PW" in by_env.env_references()  # so the shell's variable reaches no component by itself
    (tmp_path / "ml_pw").write_text(password + "\n")
    (tmp_path / "ml_pw").chmod(0o600)
    by_file = parse_spec(
        {"mlflow": {"tracking_uri": ML_URI, "username": "u", "password": {"from_file": "ml_pw"}}}, base_dir=tmp_path
    )
    assert managed.resolve(by_file, {}).mlflow_login == ("u", password)
    assert by_file.declared_files() == {"mlflow.password": tmp_path / "ml_pw"}
    # doctor's row: resolves, or one line naming the key and the variable to export
    os.environ.pop("ML_PW", None)
    [row] = resolve_checks(by_env)
    assert str(row.status) == "fail" and "mlflow.password" in row.saw and "ML_PW" in row.saw
    [row] = resolve_checks(by_file)
    assert str(row.status) == "ok" and "MLflow login of user 'u' resolves" in row.saw and password not in row.saw
    (tmp_path / "ml_pw").write_text("")
    with pytest.raises(SpecError) as err:
        managed.resolve(by_file, {})
    assert err.value.problems == [("mlflow.password", "is empty; give the MLflow user's password")]


def test_tasks_on_the_local_target_send_the_login_to_an_external_mlflow(tmp_path, monkeypatch):
    from airflow_gitops.local.layout import Layout, dag_runtime_env

    password = secrets.token_urlsafe(16)
    monkeypatch.setenv("ML_PW", password)
    spec = parse_spec({"mlflow": {"tracking_uri": ML_URI, "username": "u", "password": "${ML_PW}"}}, base_dir=tmp_path)
    env = dag_runtime_env(Layout(spec))
    assert env["MLFLOW_TRACKING_URI"] == ML_URI
    assert (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"]) == ("u", password)
    without = parse_spec({"mlflow": {"tracking_uri": ML_URI}}, base_dir=tmp_path)
    assert "MLFLOW_TRACKING_PASSWORD" not in dag_runtime_env(Layout(without))
