"""Workflows for the Kubernetes tests, built with mm1.config.loads like a user's file."""

from __future__ import annotations

from mm1.config import Workflow, loads

BASE = """
name: {name}
storage:
  root: {root}
cluster:
  backend: k8s
  image: registry.example.com/mm1:0.1
  namespace: ml
  service_account: mm1-runner
{cluster}
evaluate:
  benchmarks: [shapes-vqa]
select:
  metric: shapes-vqa/overall
deploy:
{deploy}
"""

CPU_CLUSTER = """
  worker_groups:
    - name: cpu
      replicas: 2
      min_replicas: 1
      max_replicas: 3
      cpus: 4
      memory: 16Gi
"""

GPU_CLUSTER = """
  head:
    cpus: 4
    memory: 16Gi
    num_cpus_for_tasks: 0
    node_selector: {pool: system}
  worker_groups:
    - name: a100
      replicas: 2
      min_replicas: 2
      max_replicas: 2
      cpus: 12
      gpus: 8
      memory: 480Gi
      node_selector: {cloud.google.com/gke-accelerator: nvidia-tesla-a100}
      tolerations:
        - {key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}
    - name: l4
      replicas: 0
      min_replicas: 0
      max_replicas: 6
      cpus: 8
      gpus: 1
      memory: 32Gi
      node_selector: {cloud.google.com/gke-accelerator: nvidia-l4, pool: spot}
      tolerations:
        - {key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}
        - {key: cloud.google.com/gke-spot, operator: Equal, value: "true", effect: NoSchedule}
  active_deadline_seconds: 172800
  pre_running_deadline_seconds: 3600
  shutdown_after_job_finishes: false
"""


def make_workflow(
    name: str = "mm1-test",
    root: str = "runs",
    cluster: str = CPU_CLUSTER,
    deploy: str = "  port: 8000",
    overrides: tuple[str, ...] = (),
) -> tuple[Workflow, str]:
    """A workflow and the text it was loaded from (what `mm1 submit --k8s` passes along)."""
    text = BASE.format(name=name, root=root, cluster=cluster, deploy=deploy)
    return loads(text, "test.yaml", overrides), text


def pod_templates(obj: dict) -> list[dict]:
    """Every pod template of a RayJob or RayService: head, workers, then the RayJob's submitter."""
    spec = obj["spec"]
    cluster = spec.get("rayClusterSpec") or spec["rayClusterConfig"]
    templates = [cluster["headGroupSpec"]["template"]] + [
        g["template"] for g in cluster.get("workerGroupSpecs", [])
    ]
    if "submitterPodTemplate" in spec:
        templates.append(spec["submitterPodTemplate"])
    return templates


def containers(obj: dict) -> list[dict]:
    """Every container of every pod template of a RayJob or RayService."""
    return [box for template in pod_templates(obj) for box in template["spec"]["containers"]]


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}
