-- The bus database beside Airflow's metadata database (docker-compose.yml).
CREATE USER lienthong WITH PASSWORD 'lienthong';
CREATE DATABASE lienthong OWNER lienthong;
-- The ministry's catalogue replica (a separate database, as a ministry's would be).
CREATE USER ministry WITH PASSWORD 'ministry';
CREATE DATABASE ministry OWNER ministry;
