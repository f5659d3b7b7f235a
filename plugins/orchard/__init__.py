"""Orchard's orchestration library: settings, lake layout, storage helpers and run reports."""
