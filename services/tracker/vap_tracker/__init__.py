"""vap_tracker: multi-object tracking, ReID identities across cameras, line and zone analytics.

- ``bytetrack.ChannelTracker``: the per-channel tracker (arrays in, arrays out; see bytetrack.py);
- ``reid``: appearance embeddings, site galleries of global identities, the per-channel ReID manager;
- ``analytics``: line crossings, zones, counts per interval, hot-swappable rules per channel;
- ``pipeline.ChannelPipeline``: all of it for one channel, no I/O; ``service.TrackerService``: NATS in/out.
"""

from vap_tracker.bytetrack import ChannelTracker, FrameTracks, TrackerConfig
from vap_tracker.track import State

__all__ = ["ChannelTracker", "FrameTracks", "State", "TrackerConfig"]
