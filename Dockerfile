FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, from pyproject.toml alone, so editing the code does not
# reinstall them (this layer is rebuilt only when pyproject.toml changes).
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY *.py ./
COPY workflows/ workflows/
COPY activities/ activities/
COPY ledger/ ledger/
# Read from /app/templates at run time (settings.templates_dir sits next to settings.py).
COPY templates/ templates/

RUN pip install --no-cache-dir . \
    && rm -rf build *.egg-info

# Non-root; it may write only to .data (the default DEALFLOW_DATA_DIR).
RUN useradd --system --user-group --uid 10001 --home-dir /app --no-create-home dealflow \
    && mkdir -p /app/.data \
    && chown dealflow:dealflow /app/.data
USER dealflow

CMD ["python", "worker.py"]
