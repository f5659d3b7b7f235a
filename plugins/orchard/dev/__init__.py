"""Tools for a developer's machine (the UI without Docker, ...): the DAGs and the steps never import them."""
