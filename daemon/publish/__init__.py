"""Where results leave the daemon: the ``Sink`` interface, its MQTT implementation, the JSON
payloads and their schemas.

Depends on ``config``, ``capture``, ``postprocess`` and ``track``; never on ``monitor``,
which reads the publisher's counters and so depends on this package.
"""
