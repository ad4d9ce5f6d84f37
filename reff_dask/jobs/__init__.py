"""Whole jobs behind the CLI subcommands: read inputs, run on the cluster, write outputs."""
