# syntax=docker/dockerfile:1
# The one image for Ray heads, workers, RayJob drivers and Serve replicas (KubeRay and docker-compose).
#   docker build -t mm1-platform:latest .
# For NVIDIA nodes, start from Ray's CUDA image and install CUDA wheels of torch:
#   docker build -t mm1-platform:gpu \
#     --build-arg RAY_IMAGE=rayproject/ray:2.60.0-py311-gpu \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
# Keep the Ray version in step with mm1.k8s.render.RAY_VERSION (the rayVersion KubeRay is told).
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311
FROM ${RAY_IMAGE}

# CPU wheels by default: an unpinned `torch` from PyPI pulls a multi-GB CUDA build.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

LABEL org.opencontainers.image.title="mm1-platform" \
      org.opencontainers.image.description="Train, evaluate and serve MM1-style multimodal LLMs on Ray"

ENV PYTHONUNBUFFERED=1

# Ray's images run as `ray` (uid 1000, group `users` gid 100). Root is needed only to create the runs
# mount point; docker-compose's named volume and Kubernetes' fsGroup both inherit its ownership.
USER root
RUN mkdir -p /mnt/runs && chown ray:users /mnt/runs
USER ray
# Owned by ray, so the compose volume shared with Prometheus and Grafana is writable by Ray.
RUN mkdir -p /tmp/ray

WORKDIR /home/ray/mm1

# Dependencies first, in their own layer, so that code edits rebuild in seconds. The image's Ray stays as
# it is (constraint), so the cluster and its clients agree on the version.
COPY --chown=ray:users pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && python -c "import ray; print(f'ray=={ray.__version__}')" > /tmp/constraints.txt \
 && grep -E '^torch([<>=!~ ]|$)' /tmp/requirements.txt > /tmp/torch.txt \
 && pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" --extra-index-url https://pypi.org/simple \
        -r /tmp/torch.txt -c /tmp/constraints.txt \
 && pip install --no-cache-dir -r /tmp/requirements.txt -c /tmp/constraints.txt

COPY --chown=ray:users mm1 ./mm1
COPY --chown=ray:users services ./services
COPY --chown=ray:users workflows ./workflows
RUN pip install --no-cache-dir --no-deps . \
 && mm1 --help > /dev/null

# GCS, dashboard, Ray client, Serve, metrics.
EXPOSE 6379 8265 10001 8000 8080
