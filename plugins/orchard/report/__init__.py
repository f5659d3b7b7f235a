"""The run report: its page and plots (render), and the Airflow UI's report tab (app)."""
