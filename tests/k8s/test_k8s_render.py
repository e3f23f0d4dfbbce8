"""What the rendered ConfigMap, RayJob and RayService say, read back as a user (or KubeRay) would."""

from __future__ import annotations

import re

import pytest
import yaml
from k8s_workflows import env_of, make_workflow, pod_templates

from mm1.config import loads
from mm1.k8s.names import dns_label, label_value
from mm1.k8s.pods import AUTH_TOKEN_KEY, RenderError
from mm1.k8s.render import (
    ENTRYPOINT,
    dump_all,
    render_all,
    render_job,
    render_service,
    serve_config,
    service_url,
)


def test_job_is_a_configmap_then_a_rayjob_running_the_mounted_workflow(cpu_workflow):
    wf, text = cpu_workflow
    configmap, rayjob = render_job(wf, text)
    assert (configmap["kind"], rayjob["kind"]) == ("ConfigMap", "RayJob")
    assert rayjob["spec"]["entrypoint"] == ENTRYPOINT == "mm1 run --here /etc/mm1/workflow.yaml"
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    volume = next(v for v in head["volumes"] if "configMap" in v)
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    mount = next(m for m in head["containers"][0]["volumeMounts"] if m["name"] == volume["name"])
    assert mount["mountPath"] == "/etc/mm1" and mount["readOnly"] is True
    # The user's file is kept verbatim beside the effective one.
    assert configmap["data"]["source.yaml"] == text


def test_effective_workflow_points_runs_at_the_pvc_and_does_not_block_on_serving(cpu_workflow):
    wf, text = cpu_workflow
    configmap, rayjob = render_job(wf, text)
    effective = loads(configmap["data"]["workflow.yaml"])
    assert effective.storage.root == wf.cluster.storage_mount == "/mnt/runs"
    assert effective.deploy.keep_serving is False
    # Everything else is the workflow the user submitted, including command-line overrides.
    assert effective.cluster == wf.cluster and effective.pretrain == wf.pretrain
    assert rayjob["spec"]["metadata"]["run_dir"] == "/mnt/runs/mm1-test"
    for template in pod_templates(rayjob)[:-1]:  # Ray pods, not the submitter
        spec = template["spec"]
        claim = next(v for v in spec["volumes"] if "persistentVolumeClaim" in v)
        assert claim["persistentVolumeClaim"]["claimName"] == "mm1-runs"
        mounts = {m["name"]: m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
        assert mounts[claim["name"]] == "/mnt/runs"


def test_command_line_overrides_reach_the_cluster():
    wf, text = make_workflow(overrides=("pretrain.steps=7",))
    configmap, _ = render_job(wf, text)
    assert loads(configmap["data"]["workflow.yaml"]).pretrain.steps == 7


def test_local_root_without_a_pvc_is_refused_naming_the_key():
    wf, text = make_workflow(overrides=("cluster.pvc=",))
    with pytest.raises(RenderError, match=r"cluster\.pvc"):
        render_job(wf, text)


def test_cluster_shape_comes_from_the_workflow(gpu_workflow):
    wf, text = gpu_workflow
    _, rayjob = render_job(wf, text)
    spec = rayjob["spec"]
    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # keep training off the head
    assert head["template"]["spec"]["nodeSelector"] == {"pool": "system"}
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert list(groups) == ["a100", "l4"]
    a100, l4 = groups["a100"], groups["l4"]
    assert (a100["replicas"], a100["minReplicas"], a100["maxReplicas"]) == (2, 2, 2)
    assert (l4["replicas"], l4["minReplicas"], l4["maxReplicas"]) == (0, 0, 6)
    a100_box = a100["template"]["spec"]["containers"][0]
    assert a100_box["resources"] == {
        "requests": {"cpu": "12", "memory": "480Gi"},
        "limits": {"cpu": "12", "memory": "480Gi", "nvidia.com/gpu": "8"},
    }
    assert l4["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert a100["template"]["spec"]["nodeSelector"] == {
        "cloud.google.com/gke-accelerator": "nvidia-tesla-a100"
    }
    assert l4["template"]["spec"]["nodeSelector"] == {
        "cloud.google.com/gke-accelerator": "nvidia-l4",
        "pool": "spot",
    }
    assert l4["template"]["spec"]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "cloud.google.com/gke-spot", "operator": "Equal", "value": "true", "effect": "NoSchedule"},
    ]
    # The l4 group scales between 0 and 6, so the autoscaler is on.
    assert cluster["enableInTreeAutoscaling"] is True
    assert spec["activeDeadlineSeconds"] == 172800
    assert spec["preRunningDeadlineSeconds"] == 3600
    assert spec["shutdownAfterJobFinishes"] is False


def test_cpu_only_groups_get_no_gpu_limit_and_fixed_groups_no_autoscaler():
    wf, text = make_workflow(
        cluster="""
  worker_groups:
    - {name: cpu, replicas: 2, min_replicas: 2, max_replicas: 2, cpus: 0.5, memory: 2Gi}
"""
    )
    _, rayjob = render_job(wf, text)
    cluster = rayjob["spec"]["rayClusterSpec"]
    box = cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in box["resources"]["limits"]
    assert box["resources"]["requests"]["cpu"] == "500m"
    assert cluster["enableInTreeAutoscaling"] is False


def test_zero_deadline_means_none():
    wf, text = make_workflow(overrides=("cluster.active_deadline_seconds=0",))
    _, rayjob = render_job(wf, text)
    assert "activeDeadlineSeconds" not in rayjob["spec"]
    assert rayjob["spec"]["preRunningDeadlineSeconds"] == 1800


@pytest.mark.parametrize(
    "group, key",
    [
        ("{name: GPU_Pool, cpus: 1, memory: 1Gi}", r"worker_groups\[0\]\.name"),
        ("{name: g, replicas: 5, min_replicas: 0, max_replicas: 4}", r"worker_groups\[0\]\.replicas"),
        ("{name: g, min_replicas: 3, max_replicas: 2, replicas: 2}", r"worker_groups\[0\]"),
        ("{name: g, cpus: 0}", r"worker_groups\[0\]\.cpus"),
        ("{name: g, tolerations: [{key: k, operator: Exists, value: v}]}", r"tolerations\[0\]\.value"),
        ("{name: g, tolerations: [{key: k, operator: In}]}", r"tolerations\[0\]\.operator"),
    ],
)
def test_bad_cluster_shapes_are_refused_naming_the_key(group, key):
    wf, text = make_workflow(cluster=f"  worker_groups:\n    - {group}\n")
    with pytest.raises(RenderError, match=key):
        render_job(wf, text)


def test_duplicate_group_names_are_refused():
    wf, text = make_workflow(cluster="  worker_groups:\n    - {name: g}\n    - {name: g}\n")
    with pytest.raises(RenderError, match=r"worker_groups\[1\]\.name.*another group"):
        render_job(wf, text)


def test_every_pod_runs_as_non_root_with_the_service_account(gpu_workflow):
    wf, text = gpu_workflow
    objs = render_all(wf, text, "s3://bucket/mm1-runs/x/select/checkpoint")
    templates = pod_templates(objs[1]) + pod_templates(objs[2])
    assert len(templates) == 4 + 3
    for template in templates:
        spec = template["spec"]
        assert spec["serviceAccountName"] == "mm1-runner"
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == 1000
        for box in spec["containers"]:
            assert box["securityContext"]["runAsNonRoot"] is True
            assert box["securityContext"]["allowPrivilegeEscalation"] is False
    # KubeRay injects the autoscaler into the head pod; it gets the same non-root context.
    for obj in objs[1:]:
        cluster = obj["spec"].get("rayClusterSpec") or obj["spec"]["rayClusterConfig"]
        assert cluster["enableInTreeAutoscaling"] is True
        assert cluster["autoscalerOptions"]["securityContext"]["runAsNonRoot"] is True


def test_ray_token_comes_from_the_secret_in_every_container(gpu_workflow):
    wf, text = gpu_workflow
    objs = render_all(wf, text, "s3://bucket/x")
    for obj in objs[1:]:
        cluster = obj["spec"].get("rayClusterSpec") or obj["spec"]["rayClusterConfig"]
        assert cluster["authOptions"] == {"mode": "token", "secretName": "ray-auth-token"}
        for template in pod_templates(obj):
            env = env_of(template["spec"]["containers"][0])
            assert env["RAY_AUTH_MODE"] == {"name": "RAY_AUTH_MODE", "value": "token"}
            assert env["RAY_AUTH_TOKEN"] == {
                "name": "RAY_AUTH_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": "ray-auth-token", "key": AUTH_TOKEN_KEY}},
            }


def test_every_ray_container_starts_with_the_deploy_ingress():
    for ingress, flag in (("auto", "1"), ("haproxy", "1"), ("proxy", "0")):
        wf, text = make_workflow(overrides=(f"deploy.ingress={ingress}",))
        for obj in render_all(wf, text, "s3://bucket/x")[1:]:
            for template in pod_templates(obj):
                env = env_of(template["spec"]["containers"][0])
                assert env["RAY_SERVE_ENABLE_HA_PROXY"] == {
                    "name": "RAY_SERVE_ENABLE_HA_PROXY",
                    "value": flag,
                }


def test_head_env_is_set_on_the_head_only():
    wf, text = make_workflow(overrides=("cluster.head_env={RAY_GRAFANA_HOST: 'http://grafana:3000'}",))
    for obj in render_all(wf, text, "s3://bucket/x")[1:]:
        head, *others = pod_templates(obj)
        assert env_of(head["spec"]["containers"][0])["RAY_GRAFANA_HOST"]["value"] == "http://grafana:3000"
        assert all("RAY_GRAFANA_HOST" not in env_of(t["spec"]["containers"][0]) for t in others)


# Anything that looks like a credential: long hex/base64 runs, or a key=value pair with a secret-ish name.
TOKEN_LIKE = re.compile(r"[A-Za-z0-9+/=_-]{32,}")


def test_no_secret_value_is_ever_written_into_the_manifests(gpu_workflow, monkeypatch):
    # Even with credentials in this process's environment, nothing of them reaches the manifests.
    monkeypatch.setenv("RAY_AUTH_TOKEN", "f" * 40)
    monkeypatch.setenv("MM1_API_KEY", "sk-" + "a" * 40)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "b" * 40)
    wf, text = gpu_workflow
    rendered = dump_all(render_all(wf, text, "s3://bucket/x"))
    assert "f" * 40 not in rendered and "a" * 40 not in rendered and "b" * 40 not in rendered
    for doc in yaml.safe_load_all(rendered):
        for template in pod_templates(doc) if doc["kind"] != "ConfigMap" else []:
            for box in template["spec"]["containers"]:
                for var in box.get("env", []):
                    if var["name"] in ("RAY_AUTH_TOKEN", "MM1_API_KEY"):
                        assert "value" not in var and "secretKeyRef" in var["valueFrom"]
                    else:
                        assert not TOKEN_LIKE.fullmatch(str(var.get("value", ""))), var


def test_names_and_labels_are_valid_for_kubernetes(gpu_workflow):
    wf, text = gpu_workflow  # name "MM1_3B paper recipe"
    objs = render_all(wf, text, "s3://bucket/x")
    names = [o["metadata"]["name"] for o in objs]
    assert all(re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", n) for n in names), names
    assert len(objs[1]["metadata"]["name"]) <= 47 and len(objs[2]["metadata"]["name"]) <= 47
    for obj in objs:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "mm1"
        assert labels["app.kubernetes.io/managed-by"] == "mm1"
        assert labels["mm1.io/workflow"] == "MM1_3B-paper-recipe"
        assert obj["metadata"]["namespace"] == "ml"
    for template in pod_templates(objs[1]):
        assert template["metadata"]["labels"]["mm1.io/workflow"] == "MM1_3B-paper-recipe"


def test_distinct_workflow_names_stay_distinct_after_sanitizing():
    assert dns_label("My_Run") != dns_label("my-run")
    assert dns_label("quickstart") == "quickstart"
    long = "x" * 80
    assert len(dns_label(long)) <= 47 and dns_label(long) != dns_label(long + "y")
    assert dns_label("7b").startswith("wf-7b")
    assert len(label_value("a" * 100)) <= 63


def test_service_serves_the_winner_with_the_deploy_settings(gpu_workflow):
    wf, text = gpu_workflow
    service = render_service(wf, "s3://bucket/mm1-runs/run/select/winner")
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    (app,) = config["applications"]
    assert app["import_path"] == "services.openai_app:build_app"
    assert app["route_prefix"] == "/"
    args = app["args"]
    assert args["checkpoint"] == "s3://bucket/mm1-runs/run/select/winner"
    assert args["model_name"] == "mm1-3b-chat"
    assert args["gpus_per_replica"] == 1
    assert args["autoscaling"] == {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 4}
    assert args["api_key_env"] == "MM1_API_KEY"
    assert config["http_options"] == {"host": "0.0.0.0", "port": 8000}
    head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {"containerPort": 8000, "name": "serve"} in head["ports"]
    # The API key reaches the replicas from a Secret, under the variable deploy.api_key_env names.
    assert env_of(head)["MM1_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "mm1-api-key"


def test_service_args_are_what_build_app_accepts(gpu_workflow):
    from services.settings import ServeSettings

    wf, _ = gpu_workflow
    args = serve_config(wf, "/mnt/runs/x")["applications"][0]["args"]
    settings = ServeSettings.from_args(args)  # raises on any key build_app does not know
    assert settings.checkpoint == "/mnt/runs/x" and settings.gpus_per_replica == 1


def test_explicit_deployment_override_sizes_that_deployment(cpu_workflow):
    wf, _ = cpu_workflow
    fixed = serve_config(wf, "/c", deployment_name="Chat")["applications"][0]["deployments"]
    cpu_actor = {"num_gpus": 0, "runtime_env": {"env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}}}
    assert fixed == [{"name": "Chat", "num_replicas": 1, "ray_actor_options": cpu_actor}]
    scaled, _ = make_workflow(deploy="  autoscaling: {min_replicas: 2, max_replicas: 5}")
    deployment = serve_config(scaled, "/c", deployment_name="Chat")["applications"][0]["deployments"][0]
    assert "num_replicas" not in deployment
    assert deployment["autoscaling_config"]["max_replicas"] == 5


def test_gpu_replicas_need_a_gpu_group(cpu_workflow):
    wf, _ = make_workflow(deploy="  gpus_per_replica: 1")
    with pytest.raises(RenderError, match="deploy.gpus_per_replica"):
        render_service(wf, "/mnt/runs/x")


def test_service_url_names_the_serve_service(gpu_workflow):
    wf, _ = gpu_workflow
    name = render_service(wf, "/x")["metadata"]["name"]
    assert service_url(wf) == f"http://{name}-serve-svc.ml.svc.cluster.local:8000"


def test_dump_all_round_trips_as_a_multi_document_stream(gpu_workflow):
    wf, text = gpu_workflow
    objs = render_all(wf, text, "s3://bucket/x")
    stream = dump_all(objs)
    assert stream.count("\n---\n") + stream.startswith("---") == 3
    assert list(yaml.safe_load_all(stream)) == objs
    assert "serveConfigV2: |" in stream  # embedded YAML stays readable
