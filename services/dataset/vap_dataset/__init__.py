"""Dataset capture: sampled frames and their detections saved for retraining (`python -m vap_dataset`).

A small consumer beside the pipeline, never in it: it subscribes to ``vap.scenario.*.config`` (which
scenarios capture: PipelineSettings.dataset) and ``vap.detections.*``; a frame due for capture (its scenario
captures, ``interval`` since the last saved frame of the channel, under ``max_frames`` and the byte quota)
is copied out of the decoder's ring through ``FrameDetections.frame_ref`` (the slot's generation is checked
after the copy: an overwritten slot is skipped, not saved wrong) and handed to one writer thread through a
queue of two. A full queue drops the frame: JPEG encoding and disk writes can never slow inference, the
tracker or the bus.

Layout under ``<dir>/<scenario id>/``:

- ``yolo``: ``images/<name>.jpg`` and ``labels/<name>.txt`` (``class x_center y_center width height``,
  normalised to [0, 1]) plus ``classes.txt`` (the class names, line = class id) and ``data.yaml``.
- ``coco``: ``images/<name>.jpg`` and ``annotations.json`` (COCO detection format, ``bbox`` = [x, y, w, h]
  in image pixels; categories = the model's class ids and names), rewritten after every frame (atomically).

The quota (``max_bytes``, all scenarios together) counts what is on disk already when the service starts.
"""
