"""On the side of the frame path: stats, the stats interval, batch health, drift, metrics,
``/healthz`` and sd_notify.

May import any package of the frame path (it reads what they count, and hands its stats to
the ``Sink``); none of them imports this package.
"""
