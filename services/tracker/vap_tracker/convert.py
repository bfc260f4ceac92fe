"""Between the wire (vap.v1 protobuf) and the tracker's arrays."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping

import numpy as np
import numpy.typing as npt

from vap_proto.v1 import common_pb2, detection_pb2, tracking_pb2
from vap_tracker.bytetrack import FrameTracks

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


def detection_arrays(
    fd: detection_pb2.FrameDetections, class_names: MutableMapping[int, str] | None = None
) -> tuple[F64, F64, I64]:
    """(boxes (M, 4), scores (M,), class ids (M,)) of a FrameDetections; records class labels seen in
    ``class_names`` (the tracker reports labels with its tracks, the detections carry them)."""
    dets = fd.detections
    m = len(dets)
    boxes = np.empty((m, 4))
    scores = np.empty(m)
    classes = np.empty(m, dtype=np.int64)
    for k, d in enumerate(dets):
        b = d.box
        boxes[k] = (b.x1, b.y1, b.x2, b.y2)
        scores[k] = d.confidence
        classes[k] = d.class_id
        if class_names is not None and d.class_name and d.class_id not in class_names:
            class_names[d.class_id] = d.class_name
    return boxes, scores, classes


def tracks_to_proto(
    t: FrameTracks,
    class_names: Mapping[int, str],
    global_ids: Mapping[int, int],
    attributes: Mapping[int, list[common_pb2.Attribute]] | None = None,
) -> list[tracking_pb2.Track]:
    out = []
    for k, tid in enumerate(t.track_id.tolist()):
        x1, y1, x2, y2 = t.box[k].tolist()
        vx, vy = t.velocity[k].tolist()
        cls = int(t.class_id[k])
        out.append(
            tracking_pb2.Track(
                track_id=tid,
                global_id=global_ids.get(tid, 0),
                state=int(t.state[k]),  # type: ignore[arg-type]
                box=common_pb2.BoundingBox(x1=x1, y1=y1, x2=x2, y2=y2),
                velocity=tracking_pb2.Velocity(vx=vx, vy=vy),
                class_id=cls,
                class_name=class_names.get(cls, ""),
                confidence=float(t.score[k]),
                age=int(t.age[k]),
                hits=int(t.hits[k]),
                frames_since_update=int(t.frames_since_update[k]),
                merged_into_track_id=int(t.merged_into[k]),
                attributes=attributes.get(tid, ()) if attributes else (),
            )
        )
    return out
