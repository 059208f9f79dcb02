"""airflow-gitops kubernetes."""
