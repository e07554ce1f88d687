# dvcm on Ray's GPU image: the image of jobs/rayjob.yaml and jobs/cluster-gpu.yaml (build and push: jobs/README.md).
#
# The tag's Ray and Python must match jobs/rayjob.yaml (rayVersion) and the image tags in jobs/ (tests/test_docker.py
# checks both, and that Ray's version satisfies pyproject.toml's range).
FROM rayproject/ray:2.60.0-py311-gpu

# Ray's GPU images ship Python, Ray and the CUDA libraries but no torch (the ray-ml images, which had one, are no
# longer built), so pip installs torch and torchvision from the ranges in pyproject.toml: PyPI's CUDA build. On a base
# image that already has a torch in those ranges (e.g. NVIDIA's PyTorch images), the same line keeps that torch: this
# file installs no constraints file on purpose, and nothing that pyproject.toml does not declare.
WORKDIR /home/ray/dvcm
COPY --chown=ray:users . /home/ray/dvcm
RUN pip install --no-cache-dir -e /home/ray/dvcm

# A self-check of a node: docker run --rm --gpus all IMAGE dvcm-pipeline doctor --device cuda
CMD ["dvcm-pipeline", "doctor"]
