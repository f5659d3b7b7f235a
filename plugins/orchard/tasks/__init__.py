"""The bodies of the DAGs' Python tasks, one function per task, testable without Airflow."""
