-- The bus database beside Airflow's metadata database (docker-compose.yml).
CREATE USER lienthong WITH PASSWORD 'lienthong';
CREATE DATABASE lienthong OWNER lienthong;
