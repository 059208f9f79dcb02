"""airflow-gitops dag_repo."""
