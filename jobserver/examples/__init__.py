"""Bundled example templates and the scripts they run."""
