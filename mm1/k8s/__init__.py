"""Kubernetes: KubeRay manifests rendered from a workflow, validated offline, applied with server-side apply."""
