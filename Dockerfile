# The lienthong image: Airflow 3.3.2 with the project installed under our own constraints.
FROM apache/airflow:3.3.2-python3.11
COPY --chown=airflow:root . /opt/lienthong
RUN pip install --no-cache-dir --constraint /opt/lienthong/constraints.txt --editable "/opt/lienthong[airflow]" \
    "apache-airflow-providers-postgres"
WORKDIR /opt/lienthong
