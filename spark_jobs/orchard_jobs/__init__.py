"""Modules of Orchard's Spark jobs: pure transforms used by the featurize and PCA entry points."""
