# Minimal stubs for the part of PyCUDA that edgewatch uses (pycuda ships no type hints).
