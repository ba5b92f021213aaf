# Shelver consumer image: TensorFlow with CUDA from the base image, the rest of requirements.txt on top.
FROM tensorflow/tensorflow:2.20.0-gpu

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# Dependencies first so code edits reuse this layer; tensorflow stays the base image's CUDA build.
COPY requirements.txt /tmp/requirements.txt
RUN grep -v -E '^tensorflow(\[.*\])?==' /tmp/requirements.txt > /tmp/requirements-notf.txt \
 && pip install -r /tmp/requirements-notf.txt

COPY . /app
# Editable so that consumer.config.REPO_ROOT is /app and finds models/artifacts.
RUN pip install --no-deps -e .

CMD ["shelver", "consume"]
