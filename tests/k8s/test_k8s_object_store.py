"""An s3:// storage root on Kubernetes: every container reads the keys from a Secret by reference, gets the
endpoint as a plain value, mounts no PVC; literal keys in the workflow are refused. A PVC root gets none of it."""

from __future__ import annotations

import pytest
import yaml
from k8s_workflows import GPU_CLUSTER, containers, env_of, make_workflow, pod_templates

from mm1.config import ClusterConfig, ConfigError, loads
from mm1.k8s.pods import RenderError
from mm1.k8s.render import dump_all, render_all
from mm1.k8s.validate import inline_secrets, validate_all

CHECKPOINT = "s3://bucket/runs/mm1-test/select/winner"
ENDPOINT = "http://minio.minio.svc.cluster.local:9000"
KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
S3_VARS = (*KEYS, "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION")


def s3_objects(*overrides: str, cluster: str | None = None) -> list[dict]:
    """ConfigMap, RayJob and RayService of an s3 workflow with an S3-compatible endpoint."""
    kwargs = {"cluster": cluster} if cluster else {}
    wf, text = make_workflow(
        root="s3://bucket/runs", overrides=(f"cluster.s3_endpoint={ENDPOINT}", *overrides), **kwargs
    )
    return render_all(wf, text, CHECKPOINT)


def test_every_container_reads_both_keys_from_the_secret_and_gets_the_endpoint():
    _, rayjob, service = s3_objects()
    # head + 1 worker group + submitter for the job; head + workers for the service
    assert (len(containers(rayjob)), len(containers(service))) == (3, 2)
    for box in containers(rayjob) + containers(service):
        env = env_of(box)
        for key in KEYS:
            assert env[key] == {"name": key, "valueFrom": {"secretKeyRef": {"name": "mm1-s3", "key": key}}}
        # Temporary credentials are used when the Secret has them; a Secret without the key still starts.
        assert env["AWS_SESSION_TOKEN"]["valueFrom"]["secretKeyRef"] == {
            "name": "mm1-s3",
            "key": "AWS_SESSION_TOKEN",
            "optional": True,
        }
        assert env["AWS_ENDPOINT_URL"] == {"name": "AWS_ENDPOINT_URL", "value": ENDPOINT}
        assert "envFrom" not in box  # only the named keys, never the whole Secret


def test_no_pvc_is_mounted_for_an_object_store_root():
    configmap, rayjob, service = s3_objects()
    assert loads(configmap["data"]["workflow.yaml"]).storage.root == "s3://bucket/runs"
    assert rayjob["spec"]["metadata"]["run_dir"] == "s3://bucket/runs/mm1-test"
    for template in pod_templates(rayjob) + pod_templates(service):
        volumes = template["spec"].get("volumes", [])
        assert not any("persistentVolumeClaim" in v for v in volumes)
        for box in template["spec"]["containers"]:
            assert all(m["name"] != "runs" for m in box.get("volumeMounts", []))


def test_secret_name_and_region_come_from_the_cluster_section():
    _, rayjob, service = s3_objects("cluster.storage_secret=team-minio", "cluster.s3_region=eu-central-1")
    for box in containers(rayjob) + containers(service):
        env = env_of(box)
        assert {env[k]["valueFrom"]["secretKeyRef"]["name"] for k in (*KEYS, "AWS_SESSION_TOKEN")} == {
            "team-minio"
        }
        assert env["AWS_REGION"]["value"] == env["AWS_DEFAULT_REGION"]["value"] == "eu-central-1"


def test_defaults_name_the_documented_secret_and_leave_endpoint_and_region_out():
    assert ClusterConfig().storage_secret == "mm1-s3"
    wf, text = make_workflow(root="s3://bucket/runs")
    for obj in render_all(wf, text, CHECKPOINT)[1:]:
        for box in containers(obj):
            env = env_of(box)
            assert set(KEYS) <= set(env)
            assert not {"AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION"} & set(env)


def test_empty_storage_secret_renders_no_keys_for_an_iam_role():
    _, rayjob, service = s3_objects("cluster.storage_secret=")
    for box in containers(rayjob) + containers(service):
        env = env_of(box)
        assert not {*KEYS, "AWS_SESSION_TOKEN"} & set(env)
        assert env["AWS_ENDPOINT_URL"]["value"] == ENDPOINT


def test_no_literal_key_value_anywhere_in_the_yaml(monkeypatch):
    # Keys in this process's environment (as on a laptop with AWS configured) never reach the manifests.
    access, secret, token = (
        "AKIAIOSFODNN7EXAMPLE",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "FwoGZXIvYXdzEXAMPLE",
    )
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", access)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_SESSION_TOKEN", token)
    objs = s3_objects(cluster=GPU_CLUSTER)
    rendered = dump_all(objs)
    assert access not in rendered and secret not in rendered and token not in rendered
    assert "&id" not in rendered and "*id" not in rendered  # no YAML aliases: each container reads whole
    for doc in yaml.safe_load_all(rendered):
        assert inline_secrets(doc) == []
        if doc["kind"] == "ConfigMap":
            continue
        for box in containers(doc):
            for key in (*KEYS, "AWS_SESSION_TOKEN"):
                assert "value" not in env_of(box)[key]


@pytest.mark.parametrize("cluster", [None, GPU_CLUSTER], ids=["cpu", "two-gpu-groups"])
def test_s3_manifests_are_valid_against_the_kuberay_crds(cluster):
    objs = s3_objects("cluster.s3_region=us-west-2", "cluster.image_pull_secrets=[regcred]", cluster=cluster)
    assert [o["kind"] for o in objs] == ["ConfigMap", "RayJob", "RayService"]
    assert validate_all(objs) == []
    for template in pod_templates(objs[1]) + pod_templates(objs[2]):
        assert template["spec"]["imagePullSecrets"] == [{"name": "regcred"}]


def test_a_pvc_root_gets_no_object_store_settings():
    wf, text = make_workflow(overrides=(f"cluster.s3_endpoint={ENDPOINT}", "cluster.s3_region=eu-west-1"))
    objs = render_all(wf, text, "/mnt/runs/mm1-test/select/winner")
    assert validate_all(objs) == []
    assert "AWS_" not in dump_all(objs[1:])  # the ConfigMap keeps the workflow file as written
    for template in pod_templates(objs[1])[:-1] + pod_templates(objs[2]):
        claims = [
            v["persistentVolumeClaim"]["claimName"]
            for v in template["spec"]["volumes"]
            if "persistentVolumeClaim" in v
        ]
        assert claims == ["mm1-runs"]
        assert "envFrom" not in template["spec"]["containers"][0]


def test_other_object_stores_get_no_aws_variables():
    wf, text = make_workflow(root="gs://bucket/runs")
    assert "AWS_" not in dump_all(render_all(wf, text, "gs://bucket/runs/x")[1:])


@pytest.mark.parametrize("key", ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"])
def test_literal_keys_in_head_env_are_refused_naming_the_key_and_the_secret(key):
    cluster = f"  head_env:\n    {key}: abc123\n"
    with pytest.raises(ConfigError) as error:
        make_workflow(root="s3://bucket/runs", cluster=cluster)
    message = str(error.value)
    assert message.startswith("test.yaml:11: ")  # the line of the key in the file
    assert f"cluster.head_env.{key}" in message
    assert "cluster.storage_secret" in message and "kubectl -n ml create secret generic mm1-s3" in message
    assert "abc123" not in message  # the error does not echo the credential


def test_endpoint_in_head_env_points_at_the_typed_field():
    with pytest.raises(ConfigError, match=r"cluster\.head_env\.AWS_ENDPOINT_URL: set cluster\.s3_endpoint"):
        make_workflow(
            root="s3://bucket/runs", overrides=(f"cluster.head_env={{AWS_ENDPOINT_URL: '{ENDPOINT}'}}",)
        )


def test_endpoint_must_be_a_url():
    with pytest.raises(ConfigError, match=r"cluster\.s3_endpoint: 'minio:9000' must be an http"):
        make_workflow(root="s3://bucket/runs", overrides=("cluster.s3_endpoint=minio:9000",))


def test_a_secret_name_kubernetes_cannot_hold_is_refused():
    wf, text = make_workflow(root="s3://bucket/runs", overrides=("cluster.storage_secret=S3_Creds",))
    with pytest.raises(RenderError, match=r"cluster\.storage_secret: 'S3_Creds'"):
        render_all(wf, text)
