"""edgewatch: real-time multi-camera video analytics daemon.

A frame's path through the package follows the folder names:
``capture`` -> ``batch`` -> ``infer`` -> ``postprocess`` -> ``publish``,
with ``monitor`` on the side and ``pipeline`` wiring them together.
"""

__version__ = "0.1.0"
