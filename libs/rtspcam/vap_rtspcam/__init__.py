"""vap_rtspcam: simulated RTSP cameras for tests, benchmarks and demos.

Each camera is one GStreamer gst-rtsp-server process (Debian packages in scripts/apt-packages.txt) serving
the H.264 access units of a video file in a loop, without re-encoding, so frame i of a session is frame
i mod N of the file. Outages are independent per camera: kill, pause (SIGSTOP), resume, restart.
"""

from vap_rtspcam.controller import RtspCamera, RtspCameraError, unavailable_reason

__all__ = ["RtspCamera", "RtspCameraError", "unavailable_reason"]
