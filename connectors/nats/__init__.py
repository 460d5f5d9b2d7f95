"""Cluster mode over NATS JetStream (README "Running a cluster").

``subjects`` maps events to subjects and accounts to shards (pure); ``config`` is the
``[cluster]`` section; ``jetstream`` connects, declares the streams and publishes (the
``riskmon ingest`` side); ``leases`` holds shard leases in a JetStream key-value bucket;
``source`` is the engine side: a connector that feeds all market data and this daemon's
shard of accounts into the unchanged engine.
"""
