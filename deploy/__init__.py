"""Serval deployment: the `serval` command, the one-command local cluster, and (later) the test bed."""
