"""Several workers as one installation: change events between them and one leader (issue 8)."""

from cityos.cluster.leader import Leadership
from cityos.cluster.node import Cluster

__all__ = ["Cluster", "Leadership"]
