"""The steps' Spark executors sized from the instance type (its vCPUs and the memory YARN offers).

Kept apart from emr.py, which imports Airflow's operators: the preflight sizes without them.
"""

from __future__ import annotations

import math

# Executor sizing (figures: docs/performance.md, "On EMR"). One executor per core node, one task
# slot per vCPU, one Python worker per slot with ONE engine thread: a worker's JPEG decoding overlaps
# the others' inference and nothing is oversubscribed. WORKER_PEAK_GIB bounds a worker (an ONNX
# Runtime session and one image's activations). The overhead (outside the JVM heap) is those workers
# with 50 % headroom, plus 1 GiB for the JVM's own off-heap use (Netty, Arrow buffers, thread
# stacks). The container must fit the memory YARN offers on a node of the type, beside the
# client-mode application master (spark.yarn.am.memory 512m + 384m overhead).
WORKER_PEAK_GIB = 0.5
JVM_OFF_HEAP_GIB = 1.0
EXECUTOR_HEAP_GIB = 4  # reads files, moves Arrow batches (the step's results are persisted on disk)
MIN_HEAP_MB = 2048
APPLICATION_MASTER_MB = 512 + 384
# yarn.nodemanager.resource.memory-mb per instance type: EMR Release Guide, "Task configuration"
# (/emr/latest/ReleaseGuide/emr-hadoop-task-config.html); r5.xlarge and c6g.xlarge from an earlier
# version of that page. Types not listed: YARN_SHARE of EMR's MemoryGB, the lowest share listed here.
YARN_MEMORY_MB = {
    "m5.xlarge": 12288, "m5.2xlarge": 24576, "c5.xlarge": 6144, "r5.xlarge": 24576,
    "m6g.xlarge": 11712, "m6i.xlarge": 11712, "m7g.xlarge": 11712, "c6g.xlarge": 5632,
}  # fmt: skip
YARN_SHARE = 5632 / (8 * 1024)


def vcpus_needed(vcpu: int, core_nodes: int, core_spot: bool) -> dict[str, int]:
    """The cluster's vCPUs by market, as EC2's quotas count them: the primary is On-Demand, the core
    nodes On-Demand or Spot (`core_spot`); a market the cluster does not use is absent."""
    if core_spot:
        return {"on-demand": vcpu, "spot": vcpu * core_nodes}
    return {"on-demand": vcpu * (1 + core_nodes)}


def yarn_memory_mb(instance_type: str, memory_gb: float) -> int:
    """The memory YARN offers containers on one node of the type."""
    return YARN_MEMORY_MB.get(instance_type) or int(memory_gb * 1024 * YARN_SHARE)


def executor_sizing(vcpu: int, yarn_mb: int) -> dict[str, str] | None:
    """Spark's executor settings for a node with `vcpu` vCPUs and `yarn_mb` of YARN memory: as many
    slots as vCPUs whose workers fit beside a heap of at least MIN_HEAP_MB; None when not even one does."""
    for slots in range(max(vcpu, 1), 0, -1):
        overhead_gib = math.ceil(slots * WORKER_PEAK_GIB * 1.5 + JVM_OFF_HEAP_GIB)
        heap_mb = min(EXECUTOR_HEAP_GIB * 1024, yarn_mb - APPLICATION_MASTER_MB - overhead_gib * 1024)
        heap_mb -= heap_mb % 512
        if heap_mb >= MIN_HEAP_MB:
            return {
                "spark.executor.cores": str(slots),
                "spark.task.cpus": "1",  # featurize.py gives the engine spark.task.cpus threads per worker
                "spark.executor.memory": f"{heap_mb}m",
                "spark.executor.memoryOverhead": f"{overhead_gib}g",
                "spark.python.worker.reuse": "true",  # a worker keeps its ONNX Runtime session across tasks
            }
    return None
