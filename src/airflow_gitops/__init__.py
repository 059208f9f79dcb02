"""airflow-gitops: Apache Airflow for MLOps, the GitOps way."""

__version__ = "0.1.0"
