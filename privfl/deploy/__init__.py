"""privfl on a Flower deployment, as an operator runs it (docs/deployment.md).

`local`: a loopback SuperLink and N SuperNodes (`privfl deploy local start|stop`), for trying the
deployment path on one machine and for the tests. `submit`: `privfl deploy run`, which starts a
run with `flwr run`, streams its log with `flwr log`, and reads its final status with `flwr ls`,
so that a failed ServerApp is a non-zero exit with the ServerApp's own error, not exit code 0.
The ServerApp itself is `privfl.flower_app`.
"""

from __future__ import annotations

from privfl.errors import PrivflError


class DeployError(PrivflError):
    """A Flower deployment could not be started, or a run on it did not complete."""
