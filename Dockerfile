# The INFER platform: `docker build -t infer .` then see compose.yaml for the full stack.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --system --uid 10001 --user-group --home-dir /data --create-home infer

# Dependencies first, from pyproject.toml alone, so code changes reuse this layer.
COPY pyproject.toml /tmp/pyproject.toml
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt /tmp/pyproject.toml

# A plain install: the wheel carries migrations/ inside the package (setup.py), so the
# sources are not needed at run time. The installed code stays root-owned.
COPY . /tmp/src
RUN pip install --no-cache-dir --no-deps /tmp/src \
    && rm -rf /tmp/src \
    && cd / && python -c "from infer.db import MIGRATIONS_DIR; assert (MIGRATIONS_DIR / 'env.py').is_file()"

# Runtime state (the default SQLite file, development secrets) goes to /data.
USER infer
WORKDIR /data

EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=3)"]
CMD ["infer", "serve", "--host", "0.0.0.0", "--port", "8000"]
