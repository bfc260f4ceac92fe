"""vap_decoder: cameras into the zero-copy frame bus.

- ``python -m vap_decoder agent``: the decoder agent of a host (``agent.py``): starts, supervises and stops
  one decoder process per channel on AgentCommands over NATS, publishes AgentStatus and serves metrics.
- ``python -m vap_decoder channel``: one decoder process (``process.py``): opens the source (``source.py``),
  decodes with FFmpeg (PyAV), samples (``sampler.py``), writes kept frames straight into the channel's
  shmring (``ring_sink.py``), publishes a FrameRef per frame and ChannelHealth (``channel.py``,
  ``health.py``), reconnects with backoff (``backoff.py``).
"""

__version__ = "0.1.0"
