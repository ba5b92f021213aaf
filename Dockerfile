# Shelver consumer image: TensorFlow with CUDA from the base image, the runtime dependencies
# (requirements-runtime.txt) on top, Shelver installed as a wheel (one `shelver` package; the committed
# artifact is package data), run as an unprivileged user. No training or test packages.
FROM tensorflow/tensorflow:2.20.0-gpu AS wheel
WORKDIR /src
# .dockerignore lets only the package sources and their build files in.
COPY . /src
RUN pip wheel --no-deps --no-cache-dir -w /dist /src

FROM tensorflow/tensorflow:2.20.0-gpu
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 SHELVER_METRICS_PORT=9464 \
    HOME=/tmp
# HOME=/tmp: a writable home for Keras/TensorFlow caches (Kubernetes mounts an emptyDir there; the root fs is read-only)

# Dependencies first so code edits reuse this layer; tensorflow stays the base image's CUDA build.
COPY requirements-runtime.txt /tmp/requirements-runtime.txt
RUN grep -v -E '^tensorflow(\[.*\])?==' /tmp/requirements-runtime.txt > /tmp/requirements-notf.txt \
 && pip install -r /tmp/requirements-notf.txt \
 && rm /tmp/requirements-*.txt

COPY --from=wheel /dist /tmp/dist
RUN pip install --no-deps /tmp/dist/shelver-*.whl && rm -rf /tmp/dist \
 && useradd --system --uid 10001 --user-group --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin shelver

USER 10001:10001
WORKDIR /tmp
EXPOSE 9464
# Liveness (ops metrics endpoint): fails when the main loop or inference is stuck, and when the
# process has been up past SHELVER_STARTUP_BUDGET_S (180 s) without starting its main loop, so a
# hung model load is caught too; start-period covers TensorFlow import, model load and warm-up.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 CMD ["python3", "-m", "shelver.consumer.probe", "/livez"]
# SIGTERM: finish in-flight batches, deliver, commit, exit (compose's stop_grace_period bounds it).
STOPSIGNAL SIGTERM
CMD ["shelver", "consume"]
