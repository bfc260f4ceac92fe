"""Track lifecycle: the states a track goes through and which moves between them are legal.

    TENTATIVE --(min_hits matches)--> CONFIRMED --(no match)--> LOST --(match)--> CONFIRMED
        |                                                          |
        +--(missed before confirmed)--> REMOVED <--(lost_timeout)--+

REMOVED is terminal: a removed track is published once, then forgotten, and its id is never used again
in the channel. The values are those of vap.v1.TrackState so arrays of them convert to the wire without a
lookup.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final

from vap_proto.v1 import tracking_pb2


class State(IntEnum):
    TENTATIVE = tracking_pb2.TRACK_STATE_TENTATIVE
    CONFIRMED = tracking_pb2.TRACK_STATE_CONFIRMED
    LOST = tracking_pb2.TRACK_STATE_LOST
    REMOVED = tracking_pb2.TRACK_STATE_REMOVED


LEGAL_TRANSITIONS: Final[frozenset[tuple[State, State]]] = frozenset(
    {
        (State.TENTATIVE, State.TENTATIVE),
        (State.TENTATIVE, State.CONFIRMED),
        (State.TENTATIVE, State.REMOVED),
        (State.CONFIRMED, State.CONFIRMED),
        (State.CONFIRMED, State.LOST),
        (State.LOST, State.LOST),
        (State.LOST, State.CONFIRMED),
        (State.LOST, State.REMOVED),
    }
)
"""Every (before, after) pair a track may show between two consecutive frames. A confirmed track that is
not matched becomes LOST first, never REMOVED in the same frame (lost_timeout > 0), so an occlusion of one
frame never ends a track."""

MERGE_TRANSITIONS: Final[frozenset[tuple[State, State]]] = frozenset(
    {(State.TENTATIVE, State.REMOVED), (State.CONFIRMED, State.REMOVED)}
)
"""Extra moves of a *young* track that ReID re-attaches to an older LOST track: the object continues
under the older id and the young one ends (published as REMOVED with Track.merged_into_track_id set)."""


def is_legal(before: State, after: State, *, merged: bool = False) -> bool:
    return (before, after) in LEGAL_TRANSITIONS or (merged and (before, after) in MERGE_TRANSITIONS)
