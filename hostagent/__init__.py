"""Serval host agent: control plane (Python) over the SAL data path (`hostagent.sal_core`)."""
