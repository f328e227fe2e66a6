"""A fleet of hosts: each exports its store as hive-partitioned Parquet (``export``), and
``logstats fleet`` answers the API shapes over every host's export (``engine``)."""
