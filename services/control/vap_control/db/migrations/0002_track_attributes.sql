-- 0002: attributes of tracks from the tracker's secondary classifiers (gender, age group, user ONNX), one row
-- per (track, attribute) holding the track's latest vote, so counts can be split by attribute value
-- (QueryCountsRequest.split_by_attribute: events joined to the attribute of their track).
-- Track ids are unique per channel and tracker run: a restarted tracker reuses ids, and its track's row then
-- replaces the earlier one (the newest vote wins); first/last_seen_ns say which time the row describes.

CREATE TABLE track_attributes (
    scenario_id   uuid NOT NULL REFERENCES scenarios (id) ON DELETE CASCADE,
    channel_id    text NOT NULL,
    track_id      bigint NOT NULL,
    name          text NOT NULL,                     -- vap.v1.Attribute.name, e.g. "gender"
    value         text NOT NULL,                     -- the vote's winner, or "unknown"
    confidence    real NOT NULL,                     -- mean probability of value over the votes
    votes         integer NOT NULL,                  -- crops that voted
    first_seen_ns bigint NOT NULL,                   -- capture time of the first frame stored with it
    last_seen_ns  bigint NOT NULL,                   -- capture time of the frame the vote is from
    PRIMARY KEY (scenario_id, channel_id, track_id, name)
);
CREATE INDEX track_attributes_seen ON track_attributes (scenario_id, last_seen_ns);
