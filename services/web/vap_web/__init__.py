"""The live web view: a small HTTP gateway that `vap up` starts on the decoder host.

Browsers get a page listing the cameras (health, fps, counts) and a live view per camera (the current frame
with boxes, track ids, lines, zones, running counts and a counts-per-interval chart). Pixels come straight
from the shared-memory rings (so the gateway runs where the decoders run), JPEG-encoded in one worker
thread only while somebody watches and at a capped rate; everything else comes from the control service's
gRPC API with the caller's own bearer token, so the page is exactly as protected as the API.
"""
