#!/bin/bash
# First start of docker-compose.yml's PostgreSQL: the bus database and the ministry's catalogue
# replica beside Airflow's metadata database, each with its own owner. Passwords come from .env
# (LIENTHONG_DB_PASSWORD, MINISTRY_DB_PASSWORD). Their tables are created by the init service
# (`lienthong db init`) and by the replica's own migrations.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
     -v lienthong_password="$LIENTHONG_DB_PASSWORD" -v ministry_password="$MINISTRY_DB_PASSWORD" <<'EOSQL'
CREATE USER lienthong WITH PASSWORD :'lienthong_password';
CREATE DATABASE lienthong OWNER lienthong;
CREATE USER ministry WITH PASSWORD :'ministry_password';
CREATE DATABASE ministry OWNER ministry;
EOSQL
