"""The node provider of the local rehearsal (tests/test_rehearsal.py): Ray's fake one, each node
with a temp folder of its own, as each machine of a real cluster has its own disk.

Ray's ``FakeMultiNodeProvider`` starts every node in the head's temp folder, so all nodes share
one ``session_*/runtime_resources``: a trial's node then re-extracts the job's working_dir over
the one the job's driver (on the head) runs in, deleting the driver's current directory under it
(the sweep then ends in ``[Errno 2] No such file or directory``). On real machines that cannot
happen. The monitor imports this module by name (``provider: {type: external, module: ...}``),
so the head is started with this folder on PYTHONPATH.
"""

from __future__ import annotations

import os

import ray._private.parameter
from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider


class OwnDiskFakeProvider(FakeMultiNodeProvider):
    def _create_node_with_resources_and_labels(self, node_config, tags, count, resources, labels):
        original = ray._private.parameter.RayParams
        temp_dir = os.path.join(os.environ["RAY_TMPDIR"], f"node{self._next_node_id + 1}")

        def params(**kwargs):
            kwargs.setdefault("temp_dir", temp_dir)
            return original(**kwargs)

        with self.lock:  # the base class builds RayParams under this (reentrant) lock
            ray._private.parameter.RayParams = params
            try:
                super()._create_node_with_resources_and_labels(node_config, tags, count, resources, labels)
            finally:
                ray._private.parameter.RayParams = original
