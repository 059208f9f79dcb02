"""airflow-gitops local."""
