"""The desk's own feed over MQTT 5: schema-v1 events from the order system.

``parser`` turns a topic and payload into events (pure); ``client`` owns the broker
session (persistent, QoS 1, reconnecting with backoff); ``config`` is the
``[[connectors]]`` entry of ``type = "mqtt"``.
"""
