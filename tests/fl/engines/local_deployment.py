"""The loopback deployment the tests and benchmarks use: privfl.deploy.local's, re-exported."""

from privfl.deploy.local import CONNECTION, LocalDeployment, stop_process_tree

__all__ = ["CONNECTION", "LocalDeployment", "stop_process_tree"]
