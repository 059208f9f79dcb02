"""Train, evaluate and register a scikit-learn classifier; promote it to ``champion`` only if it is better.

ingest -> validate -> train -> evaluate -> log_to_mlflow -> register -> served

* ingest:    a dataset that ships with scikit-learn (no download) -> Parquet in s3://$MLOPS_DATA_BUCKET
* validate:  schema, nulls, class balance; a failed check fails the run and says which one
* train:     a scikit-learn model chosen by the ``model`` param; the fitted model goes to S3
* evaluate:  metrics on a held-out (stratified, seeded) split; below ``min_metric`` fails the run
* log_to_mlflow: params, metrics and the model, in experiment $MLFLOW_EXPERIMENT_NAME
* register:  a new version of $MLOPS_REGISTERED_MODEL tagged with the Git commit (bundle version) and
             the Airflow run id; alias ``champion`` moves only when the new version beats it on ``metric``
* served:    when the alias moved and the platform serves models ($MLOPS_SERVING_URL), waits until the
             serving component answers with the new champion

Only small values travel through XCom (S3 keys, run ids, metrics). Heavy imports happen inside tasks.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta

from airflow.sdk import Param, dag, get_current_context, task

DATASETS = ("breast_cancer", "wine", "iris")
MODELS = ("logistic_regression", "random_forest", "gradient_boosting", "decision_tree")
# metric name -> True when higher is better
METRICS = {"accuracy": True, "f1_macro": True, "balanced_accuracy": True, "log_loss": False}
CHAMPION_ALIAS = "champion"
TEST_SIZE = 0.25
SEED = 42
MIN_CLASS_FRACTION = 0.05  # validation: every class has at least 5% of the rows
MIN_ROWS = 50
SERVED_WAIT_S = 120  # the new champion is served within a second or two of the alias move (webhook)


def _build_model(name: str, model_params: dict):
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.tree import DecisionTreeClassifier

    if name == "logistic_regression":
        return make_pipeline(StandardScaler(), LogisticRegression(**{"max_iter": 1000, **model_params}))
    if name == "random_forest":
        return RandomForestClassifier(**{"n_estimators": 100, "random_state": SEED, "n_jobs": 1, **model_params})
    if name == "gradient_boosting":
        return GradientBoostingClassifier(**{"random_state": SEED, **model_params})
    if name == "decision_tree":
        return DecisionTreeClassifier(**{"random_state": SEED, **model_params})
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")


def _split(frame):
    from sklearn.model_selection import train_test_split

    x = frame.drop(columns=["target"])
    y = frame["target"]
    return train_test_split(x, y, test_size=TEST_SIZE, random_state=SEED, stratify=y)


def _plain(value):
    """A numpy scalar as the Python value it holds (readable in messages)."""
    return value.item() if hasattr(value, "item") else value


def _better(new: float, old: float, metric: str) -> bool:
    return new > old if METRICS[metric] else new < old


@dag(
    dag_id="ml_training_pipeline",
    description="Train a scikit-learn classifier, log it to MLflow, register it and promote a better one to champion",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["mlops", "training", "mlflow"],
    # A crashed platform component is back within ~30 s (docs/recovery.md): two retries 10 s apart ride
    # out a restart without holding a genuinely broken run for long.
    default_args={"owner": "mlops", "retries": 2, "retry_delay": timedelta(seconds=10)},
    params={
        "dataset": Param("breast_cancer", enum=list(DATASETS), description="scikit-learn bundled dataset"),
        "model": Param("random_forest", enum=list(MODELS), description="scikit-learn estimator"),
        "model_params": Param({}, type="object", description="extra keyword arguments for the estimator"),
        "metric": Param("accuracy", enum=list(METRICS), description="metric that decides promotion"),
        "min_metric": Param(
            0.8,
            type="number",
            description="quality gate on the held-out metric (a minimum, or a maximum for log_loss)",
        ),
    },
    doc_md=__doc__,
)
def ml_training_pipeline():
    @task(multiple_outputs=False)
    def ingest() -> dict:
        from sklearn import datasets

        import mlops_common as mc

        ctx = get_current_context()
        params = ctx["params"]
        name = params["dataset"]
        if name not in DATASETS:
            raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
        frame = getattr(datasets, f"load_{name}")(as_frame=True).frame
        cfg = mc.settings()
        s3 = mc.s3_client()
        mc.ensure_bucket(s3, cfg.bucket, cfg.region)
        key = f"datasets/{name}/{ctx['dag_run'].run_id}/raw.parquet"
        mc.put_parquet(s3, cfg.bucket, key, frame)
        print(f"ingested {name}: {len(frame)} rows x {frame.shape[1]} columns -> s3://{cfg.bucket}/{key}")
        return {"bucket": cfg.bucket, "key": key, "dataset": name, "rows": int(len(frame))}

    @task(multiple_outputs=False)
    def validate(data: dict) -> dict:
        import pandas as pd

        import mlops_common as mc

        frame = mc.get_parquet(mc.s3_client(), data["bucket"], data["key"])
        problems = []
        if "target" not in frame.columns:
            problems.append("no 'target' column")
        features = [c for c in frame.columns if c != "target"]
        if not features:
            problems.append("no feature columns")
        non_numeric = [c for c in features if not pd.api.types.is_numeric_dtype(frame[c])]
        if non_numeric:
            problems.append(f"non-numeric feature columns: {non_numeric}")
        nulls = {c: int(n) for c, n in frame.isna().sum().items() if n}
        if nulls:
            problems.append(f"null values: {nulls}")
        if len(frame) < MIN_ROWS:
            problems.append(f"only {len(frame)} rows (need at least {MIN_ROWS})")
        if "target" in frame.columns:
            if not pd.api.types.is_integer_dtype(frame["target"]):
                problems.append(f"target has dtype {frame['target'].dtype}, expected integer class labels")
            shares = frame["target"].value_counts(normalize=True)
            if len(shares) < 2:
                problems.append(f"target has {len(shares)} class(es), need at least 2")
            small = {_plain(k): round(float(v), 4) for k, v in shares.items() if v < MIN_CLASS_FRACTION}
            if small:
                problems.append(f"class imbalance: classes below {MIN_CLASS_FRACTION:.0%} of rows: {small}")
        if problems:
            raise ValueError(f"dataset s3://{data['bucket']}/{data['key']} failed validation: " + "; ".join(problems))
        balance = {str(k): round(float(v), 4) for k, v in frame["target"].value_counts(normalize=True).items()}
        print(f"validation passed: {len(frame)} rows, {len(features)} features, class shares {balance}")
        return {**data, "n_features": len(features), "class_shares": balance}

    @task(multiple_outputs=False)
    def train(data: dict) -> dict:
        import io
        import time

        import joblib

        import mlops_common as mc

        params = get_current_context()["params"]
        s3 = mc.s3_client()
        x_train, _, y_train, _ = _split(mc.get_parquet(s3, data["bucket"], data["key"]))
        model = _build_model(params["model"], dict(params["model_params"] or {}))
        started = time.monotonic()
        model.fit(x_train, y_train)
        fit_seconds = round(time.monotonic() - started, 3)
        buf = io.BytesIO()
        joblib.dump(model, buf)
        key = data["key"].rsplit("/", 1)[0] + f"/model-{params['model']}.joblib"
        s3.put_object(Bucket=data["bucket"], Key=key, Body=buf.getvalue())
        print(f"trained {params['model']} on {len(x_train)} rows in {fit_seconds}s -> s3://{data['bucket']}/{key}")
        return {**data, "model_key": key, "fit_seconds": fit_seconds, "train_rows": int(len(x_train))}

    @task(multiple_outputs=False)
    def evaluate(trained: dict) -> dict:
        import io

        import joblib
        from sklearn import metrics as skm

        import mlops_common as mc

        params = get_current_context()["params"]
        s3 = mc.s3_client()
        _, x_test, _, y_test = _split(mc.get_parquet(s3, trained["bucket"], trained["key"]))
        model = joblib.load(
            io.BytesIO(s3.get_object(Bucket=trained["bucket"], Key=trained["model_key"])["Body"].read())
        )
        predicted = model.predict(x_test)
        scores = {
            "accuracy": skm.accuracy_score(y_test, predicted),
            "f1_macro": skm.f1_score(y_test, predicted, average="macro"),
            "balanced_accuracy": skm.balanced_accuracy_score(y_test, predicted),
            "log_loss": skm.log_loss(y_test, model.predict_proba(x_test), labels=model.classes_),
        }
        scores = {k: round(float(v), 6) for k, v in scores.items()}
        metric, bar = params["metric"], float(params["min_metric"])
        value = scores[metric]
        print(f"held-out metrics ({len(x_test)} rows): {scores}")
        if not (value >= bar if METRICS[metric] else value <= bar):
            raise ValueError(
                f"quality gate failed: {metric}={value:.4f} is {'below' if METRICS[metric] else 'above'} "
                f"min_metric={bar} (model {params['model']}, dataset {trained['dataset']})"
            )
        return {**trained, "metrics": scores, "test_rows": int(len(x_test))}

    @task(multiple_outputs=False)
    def log_to_mlflow(evaluated: dict) -> dict:
        import io

        import joblib
        import mlflow
        import sklearn
        from mlflow.models import infer_signature

        import mlops_common as mc

        ctx = get_current_context()
        params = ctx["params"]
        cfg = mc.settings()
        commit, source = mc.bundle_version(ctx)
        s3 = mc.s3_client()
        model = joblib.load(
            io.BytesIO(s3.get_object(Bucket=evaluated["bucket"], Key=evaluated["model_key"])["Body"].read())
        )
        sample = mc.get_parquet(s3, evaluated["bucket"], evaluated["key"]).drop(columns=["target"]).head(5)

        # requirements are declared above; never let MLflow scan the working directory for a uv project
        os.environ["MLFLOW_UV_AUTO_DETECT"] = "false"
        os.environ["MLFLOW_LOG_UV_FILES"] = "false"
        mlflow.set_tracking_uri(cfg.mlflow_tracking_uri)
        mlflow.set_experiment(cfg.mlflow_experiment)
        tags = {
            "airflow.dag_id": ctx["dag"].dag_id,
            "airflow.run_id": ctx["dag_run"].run_id,
            "git.commit": commit or mc.UNVERSIONED,
            "airflow.bundle_version_source": source,
        }
        with mlflow.start_run(run_name=f"{params['model']}-{evaluated['dataset']}", tags=tags) as run:
            mlflow.log_params(
                {
                    "dataset": evaluated["dataset"],
                    "model": params["model"],
                    "model_params": json.dumps(params["model_params"] or {}, sort_keys=True),
                    "test_size": TEST_SIZE,
                    "seed": SEED,
                    "train_rows": evaluated["train_rows"],
                    "test_rows": evaluated["test_rows"],
                    "data_uri": f"s3://{evaluated['bucket']}/{evaluated['key']}",
                }
            )
            mlflow.log_metrics({**evaluated["metrics"], "fit_seconds": evaluated["fit_seconds"]})
            info = mlflow.sklearn.log_model(
                model,
                name="model",
                signature=infer_signature(sample, model.predict(sample)),
                # a served model is checked on it before it serves (and `verify` compares predictions on it)
                input_example=sample.head(2),
                # explicit requirements: skips MLflow's slow dependency inference
                pip_requirements=[f"scikit-learn=={sklearn.__version__}"],
                # the model was trained by the task before, from this repository's code: pickle is fine, and
                # unlike skops it loads tree models without a list of trusted types
                serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_CLOUDPICKLE,
            )
        print(f"MLflow run {run.info.run_id} in experiment {cfg.mlflow_experiment!r}: {evaluated['metrics']}")
        return {
            "mlflow_run_id": run.info.run_id,
            "model_uri": info.model_uri,
            "metrics": evaluated["metrics"],
            "git_commit": commit,
            "bundle_version_source": source,
        }

    @task(multiple_outputs=False)
    def register(logged: dict) -> dict:
        import mlflow
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        import mlops_common as mc

        ctx = get_current_context()
        metric = ctx["params"]["metric"]
        cfg = mc.settings()
        mlflow.set_tracking_uri(cfg.mlflow_tracking_uri)
        client = MlflowClient()
        new_value = logged["metrics"][metric]
        version = mlflow.register_model(
            logged["model_uri"],
            cfg.registered_model,
            tags={
                "git.commit": logged["git_commit"] or mc.UNVERSIONED,
                "airflow.bundle_version_source": logged["bundle_version_source"],
                "airflow.run_id": ctx["dag_run"].run_id,
                "mlflow.run_id": logged["mlflow_run_id"],
                f"metric.{metric}": str(new_value),
            },
        ).version

        try:
            champion = client.get_model_version_by_alias(cfg.registered_model, CHAMPION_ALIAS)
        except MlflowException:
            champion = None
        champion_value = None
        if champion is not None:
            champion_value = client.get_run(champion.run_id).data.metrics.get(metric) if champion.run_id else None
        if champion is None:
            promote, reason = True, "no champion yet"
        elif champion_value is None:
            promote, reason = True, f"champion v{champion.version} has no {metric} metric"
        elif _better(new_value, champion_value, metric):
            promote, reason = (
                True,
                f"{metric} {new_value:.4f} beats champion v{champion.version} ({champion_value:.4f})",
            )
        else:
            promote, reason = (
                False,
                (f"{metric} {new_value:.4f} does not beat champion v{champion.version} ({champion_value:.4f})"),
            )
        if promote:
            client.set_registered_model_alias(cfg.registered_model, CHAMPION_ALIAS, version)
        client.set_model_version_tag(cfg.registered_model, version, "promotion", reason)
        print(
            f"registered {cfg.registered_model} v{version} (commit {logged['git_commit'] or mc.UNVERSIONED}); "
            f"{'promoted to' if promote else 'not promoted to'} {CHAMPION_ALIAS!r}: {reason}"
        )
        return {
            "model": cfg.registered_model,
            "version": str(version),
            "promoted": promote,
            "reason": reason,
            "champion_version": str(version) if promote else (str(champion.version) if champion else None),
            "metric": metric,
            "value": new_value,
            "git_commit": logged["git_commit"],
            "mlflow_run_id": logged["mlflow_run_id"],
        }

    @task(multiple_outputs=False)
    def served(registered: dict) -> dict:
        """Wait until the serving component answers with the new champion (when serving is on and the
        alias moved): the run shows push -> trained -> served."""
        import time
        import urllib.error
        import urllib.request

        url = os.environ.get("MLOPS_SERVING_URL")
        if not url:
            print("serving is off on this platform (serving.enabled: false): nothing to wait for")
            return {"served": None}
        if not registered["promoted"]:
            print(f"champion unchanged ({registered['reason']}): serving keeps v{registered['champion_version']}")
            return {"served": registered["champion_version"]}
        want, health = registered["version"], {}
        deadline = time.monotonic() + SERVED_WAIT_S
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                    health = json.load(r)
            except urllib.error.HTTPError as err:  # 503: nothing served yet; the body says why
                health = json.load(err)
            except (OSError, ValueError) as err:
                health = {"reason": f"{url} does not answer: {err}"}
            if health.get("alias") and health["alias"] != CHAMPION_ALIAS:
                print(f"serving follows @{health['alias']}, not @{CHAMPION_ALIAS}: nothing to wait for")
                return {"served": health.get("served_version")}
            if health.get("served_version") == want:
                print(f"serving answers with {registered['model']} v{want} (commit {registered['git_commit']})")
                return {"served": want}
            refused = {r["version"]: r["reason"] for r in health.get("refused") or []}
            if want in refused:
                raise RuntimeError(f"serving refused v{want}: {refused[want]} (it keeps serving "
                                   f"v{health.get('served_version')}); fix the model and push again")
            time.sleep(0.5)
        raise RuntimeError(f"serving did not serve v{want} within {SERVED_WAIT_S} s; last /health: {health}")

    served(register(log_to_mlflow(evaluate(train(validate(ingest()))))))


ml_training_pipeline()
