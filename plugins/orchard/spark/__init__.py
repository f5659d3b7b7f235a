"""Spark on Orchard's side: the steps' arguments and configuration, and the local steps' Spark home."""
