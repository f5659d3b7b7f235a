"""The emr target's AWS side: the cluster and its steps as data, the preflight, the staged code."""
