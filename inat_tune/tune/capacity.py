"""Can the cluster hold one trial, now or once the autoscaler has started a node?

``fits(request, node_types)`` is the decision, free of Ray: the trial's request ({"CPU": 1,
"GPU": 0.25}) against the cluster's node types (the ones the autoscaler can launch, and the
nodes up now). ``cluster_node_types()`` reads those from the running cluster (needs
``ray.init``): the nodes up now from the GCS, the launchable types from the autoscaler's config,
which is, in order,

1. the cluster config the autoscaler reports to the GCS (internal KV, namespace
   ``GCS_AUTOSCALER_STATE_NAMESPACE``, key ``GCS_AUTOSCALER_CLUSTER_CONFIG_KEY``; what
   ``ray._private.state.state.get_cluster_config()`` reads: autoscaler v2 and KubeRay write it),
2. ``~/ray_bootstrap_config.yaml``, the autoscaling config ``ray up`` writes on the head and
   passes to ``ray start --head --autoscaling-config`` (autoscaler v1, the default); the
   driver of ``ray job submit`` runs on the head, so it can read it. ``$INAT_TUNE_AUTOSCALER_CONFIG``
   names another file.

When neither is found the nodes up now are all there is (a fixed cluster).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"
CONFIG_ENV = "INAT_TUNE_AUTOSCALER_CONFIG"


@dataclass(frozen=True)
class NodeType:
    """One kind of node: its resources, how many are up now and how many more the autoscaler
    may start (0: none, e.g. the head, or a fixed node)."""

    name: str
    resources: Mapping[str, float]
    up: int = 0
    launchable: int = 0

    def holds(self, request: Mapping[str, float]) -> bool:
        return all(self.resources.get(k, 0) >= v - 1e-9 for k, v in request.items() if v > 0)

    def describe(self) -> str:
        gpu, cpu = self.resources.get("GPU", 0), self.resources.get("CPU", 0)
        others = {k: v for k, v in self.resources.items() if k not in ("GPU", "CPU")
                  and not k.startswith(("node:", "memory", "object_store_memory", "accelerator_type"))}
        parts = [f"{gpu:g} GPU", f"{cpu:g} CPU"] + [f"{v:g} {k}" for k, v in sorted(others.items())]
        return f"{self.name} ({', '.join(parts)})"


@dataclass(frozen=True)
class Verdict:
    ok: bool
    node_type: NodeType | None = None  # the type that will run trials (ok), or the largest (refused)
    now: bool = False  # a node that can hold a trial is up now
    message: str = ""  # what to print ("" when a node is up), or why the sweep is refused
    source: str = ""  # where the launchable node types came from ("" = the nodes up now only)
    alike: tuple[str, ...] = ()  # the startable types as small as node_type (the autoscaler picks)

    @property
    def waiting_for(self) -> str | None:
        """What trials wait for, in words, while no node can hold one ("a GPU worker (gpu_l4)")."""
        if not self.ok or self.now or self.node_type is None:
            return None
        kind = "GPU worker" if self.node_type.resources.get("GPU", 0) > 0 else "worker"
        return f"a {kind} ({' or '.join(self.alike or (self.node_type.name,))})"


def describe_request(request: Mapping[str, float]) -> str:
    parts = [f"{request.get('CPU', 0):g} CPU"]
    if request.get("GPU", 0):
        parts.append(f"{request['GPU']:g} GPU")
    return " + ".join(parts)


def _size(t: NodeType) -> tuple:
    return (t.resources.get("GPU", 0), t.resources.get("CPU", 0), t.resources.get("memory", 0))


def fits(request: Mapping[str, float], node_types: Iterable[NodeType], source: str = "") -> Verdict:
    """Whether a trial asking for ``request`` can ever run on a cluster of ``node_types``.

    - a node up now holds it: ok, nothing to say;
    - else a type the autoscaler can still start holds it: ok, and the message names it (the
      smallest such type: that is what the autoscaler picks for a small request);
    - else refused, naming the largest node type and its resources.
    """
    types = [t for t in node_types if t.up > 0 or t.launchable > 0]
    gpu = request.get("GPU", 0) > 0
    want = describe_request(request)
    up = [t for t in types if t.up > 0 and t.holds(request)]
    if up:
        return Verdict(True, max(up, key=_size), now=True, source=source)
    startable = [t for t in types if t.launchable > 0 and t.holds(request)]
    if startable:
        pick = min(startable, key=_size)
        # types of the same size are alike to the autoscaler: it may start any of them
        alike = [t for t in startable if _size(t) == _size(pick)]
        what = "no GPU node is up" if gpu and not any(t.up and t.resources.get("GPU", 0) > 0 for t in types) \
            else f"no node that can hold a trial ({want}) is up"
        names = " or ".join(t.describe() for t in alike)
        return Verdict(True, pick, message=f"{what}; the autoscaler can start {names}: "
                                           "trials will wait for it", source=source,
                       alike=tuple(t.name for t in alike))
    if not types:
        return Verdict(False, None, message=f"a trial asks for {want}, and the cluster has no nodes "
                                            "and no node types it can start", source=source)
    largest = max(types, key=_size)
    where = (f"the cluster's node types ({source})" if source
             else "the nodes up now (no autoscaler config found, so no others can be started)")
    return Verdict(False, largest, source=source,
                   message=f"a trial asks for {want}, and none of {where} can hold it; the largest is "
                           f"{largest.describe()}")


# ---------------------------------------------------------------------------------------------
# Reading the cluster (needs ray.init)

def types_from_autoscaler_config(config: Mapping[str, Any]) -> list[NodeType]:
    """Node types of an autoscaling config (``available_node_types``, as in cluster/*.yaml);
    ``up`` is 0: the live nodes are counted separately. The head type launches nothing."""
    head = config.get("head_node_type")
    cap = config.get("max_workers")
    out = []
    for name, t in (config.get("available_node_types") or {}).items():
        most = 0 if name == head else t.get("max_workers", cap if cap is not None else 0)
        if cap is not None:
            most = min(most, cap)
        out.append(NodeType(name, dict(t.get("resources") or {}), launchable=int(most)))
    return out


def _types_from_cluster_config_proto(cfg) -> list[NodeType]:
    out = []
    for g in cfg.node_group_configs:
        most = g.max_count if g.max_count >= 0 else 10**6  # -1: no limit
        out.append(NodeType(g.name, dict(g.resources), launchable=int(most)))
    return out


def launchable_types() -> tuple[list[NodeType], str]:
    """(node types the autoscaler can start, where they were read); ([], "") when none is found."""
    try:
        from ray._private.state import state
        cfg = state.get_cluster_config()
        if cfg is not None and len(cfg.node_group_configs):
            return _types_from_cluster_config_proto(cfg), "the autoscaler's cluster config in the GCS"
    except Exception:  # noqa: BLE001 - an older/newer Ray without it: try the file
        pass
    path = Path(os.environ.get(CONFIG_ENV) or BOOTSTRAP_CONFIG).expanduser()
    if path.is_file():
        import yaml
        try:
            config = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError):
            return [], ""
        types = types_from_autoscaler_config(config)
        if types:
            return types, str(path)
    return [], ""


def live_nodes() -> list[tuple[str, dict[str, float]]]:
    """(node type name or node id, total resources) of every alive node."""
    import ray
    out = []
    for n in ray.nodes():
        if not n.get("Alive"):
            continue
        labels = n.get("Labels") or {}
        name = labels.get("ray.io/node-group") or labels.get("ray.io/node-type") or f"node {n['NodeID'][:8]}"
        out.append((name, dict(n.get("Resources") or {})))
    return out


def merge(launchable: list[NodeType], live: list[tuple[str, dict[str, float]]]) -> list[NodeType]:
    """Launchable types plus the live nodes: a live node of a known type counts as one up of it
    (its launchable count goes down by one), any other as a type of its own."""
    by_name = {t.name: t for t in launchable}
    extra: list[NodeType] = []
    for name, res in live:
        t = by_name.get(name)
        if t is not None:
            by_name[name] = NodeType(t.name, t.resources, t.up + 1, max(0, t.launchable - 1))
        else:
            extra.append(NodeType(name, res, up=1))
    return [*by_name.values(), *extra]


def cluster_verdict(cpus_per_trial: float, gpus_per_trial: float) -> Verdict:
    """``fits`` for the connected cluster (call after ``ray.init(address=...)``)."""
    launchable, source = launchable_types()
    request = {"CPU": cpus_per_trial, "GPU": gpus_per_trial}
    return fits(request, merge(launchable, live_nodes()), source)


__all__ = ["NodeType", "Verdict", "fits", "cluster_verdict", "types_from_autoscaler_config",
           "merge", "describe_request"]
