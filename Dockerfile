# The lienthong image: Airflow 3.3.2 with the project installed under our own pinned constraints,
# with the CeleryExecutor (Redis broker) and PostgreSQL drivers (extra `distributed`). Every service of
# docker-compose.yml runs it: api-server, scheduler, dag-processor, triggerer, `celery worker`, the
# init service and the stand-ins.
FROM apache/airflow:3.3.2-python3.11
COPY --chown=airflow:root . /opt/lienthong
RUN pip install --no-cache-dir --constraint /opt/lienthong/constraints.txt --editable "/opt/lienthong[airflow,distributed]" \
    && mkdir -p /opt/lienthong/var/mocks /opt/lienthong/keys /opt/airflow/auth
WORKDIR /opt/lienthong
