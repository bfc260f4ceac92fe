"""Frame handoff benchmark: a writer process has a decoded frame, a reader process holds a numpy view of it.

``common`` holds the measuring protocol shared by every transport, ``transports`` the transports compared.
"""
