"""Line and zone analytics on tracked frames: per-rule evaluators, interval counts, and the per-channel
engine that holds the rules and swaps them while the channel runs."""

from vap_tracker.analytics.engine import AnalyticsEngine, TrackView

__all__ = ["AnalyticsEngine", "TrackView"]
