"""Tests of the shell scripts, run.sub and the Dockerfiles (no cluster, no Docker engine)."""
