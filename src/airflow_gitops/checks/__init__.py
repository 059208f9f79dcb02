"""airflow-gitops checks."""
