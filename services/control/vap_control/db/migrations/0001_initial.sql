-- 0001: scenarios and their lifecycle, the command outbox, decoder agents and workers, stored results.
--
-- Times on the data path are int64 Unix-epoch nanoseconds as on the bus (exact keys, no rounding); each
-- results table also has a generated timestamptz column for people and dashboards.

CREATE TABLE scenarios (
    id                uuid PRIMARY KEY,
    -- Idempotency key of CreateScenario; NULL when the client gave none.
    client_request_id text UNIQUE,
    channel_id        text NOT NULL UNIQUE,
    -- The only copy of the camera URL with its credentials: sent to the agent in StartChannel, never
    -- returned, logged or published elsewhere.
    source_url        text NOT NULL,
    -- vap.v1.Scenario holding only the settings fields (name, source without url, pipeline, analytics,
    -- labels): new proto fields need no migration.
    spec              bytea NOT NULL,
    status            smallint NOT NULL,             -- vap.v1.ScenarioStatus
    status_reason     text NOT NULL DEFAULT '',
    revision          bigint NOT NULL DEFAULT 1,
    health            bytea,                         -- latest vap.v1.ChannelHealth
    create_time       timestamptz NOT NULL DEFAULT now(),
    update_time       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX scenarios_newest ON scenarios (create_time DESC, id DESC);
CREATE INDEX scenarios_status ON scenarios (status);

-- Every status change, for operators and for tests that check the exact path a scenario took.
CREATE TABLE scenario_transitions (
    id          bigserial PRIMARY KEY,
    scenario_id uuid NOT NULL REFERENCES scenarios (id) ON DELETE CASCADE,
    from_status smallint NOT NULL,
    to_status   smallint NOT NULL,
    reason      text NOT NULL DEFAULT '',
    at          timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX scenario_transitions_scenario ON scenario_transitions (scenario_id, id);

-- Transactional outbox: written in the same transaction as the scenario change it belongs to; the relay
-- publishes rows of one scenario strictly in id order and marks them sent. Sent rows are kept for a while
-- (retention) as an audit trail of what was asked of which agent.
CREATE TABLE outbox (
    id              bigserial PRIMARY KEY,
    -- AgentCommand.command_id: globally unique, so agents shared by several deployments never mix them up.
    command_id      uuid NOT NULL UNIQUE,
    -- No foreign key: the stop command of a deleted scenario must still be delivered.
    scenario_id     uuid NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('start_channel', 'stop_channel', 'scenario_config')),
    -- Target agent; NULL for a start_channel not yet placed (the relay picks a live agent).
    agent_id        text,
    -- vap.v1.AgentCommand (agent_id and command_id filled in when sent) or vap.v1.ScenarioConfig.
    payload         bytea NOT NULL,
    state           text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'cancelled')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    -- Set while a relay is delivering the row (instead of holding a transaction open across the NATS
    -- round trip); an expired lease means that relay died and the row may be taken again.
    lease_until     timestamptz,
    last_error      text NOT NULL DEFAULT '',
    reply_code      smallint,                        -- vap.v1.AgentReplyCode of the agent's answer
    create_time     timestamptz NOT NULL DEFAULT now(),
    sent_time       timestamptz
);
CREATE INDEX outbox_pending ON outbox (id) WHERE state = 'pending';
CREATE INDEX outbox_pending_scenario ON outbox (scenario_id, id) WHERE state = 'pending';
CREATE INDEX outbox_sent_time ON outbox (sent_time) WHERE state <> 'pending';

-- Wake the relay as soon as a transaction that wrote commands commits.
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('vap_outbox', '');
    RETURN NULL;
END $$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

-- Decoder agents, from their AgentStatus heartbeats.
CREATE TABLE agents (
    agent_id    text PRIMARY KEY,
    node_id     text NOT NULL DEFAULT '',
    pid         integer NOT NULL DEFAULT 0,
    max_workers integer NOT NULL DEFAULT 0,
    channels    integer NOT NULL DEFAULT 0,
    version     text NOT NULL DEFAULT '',
    last_seen   timestamptz NOT NULL DEFAULT now()
);

-- Which agent, node and process run each scenario (one row while the scenario is placed on an agent).
CREATE TABLE workers (
    scenario_id uuid PRIMARY KEY REFERENCES scenarios (id) ON DELETE CASCADE,
    channel_id  text NOT NULL,
    agent_id    text NOT NULL,
    node_id     text NOT NULL DEFAULT '',
    pid         integer NOT NULL DEFAULT 0,
    ring        text NOT NULL DEFAULT '',
    assign_time timestamptz NOT NULL DEFAULT now(),
    update_time timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX workers_agent ON workers (agent_id);

-- Results. A frame is identified by (scenario, channel, capture time, stream epoch, sequence): sequence and
-- epoch restart with every decoder run, the capture time does not repeat. The frame tables are the
-- exactly-once gate: their rows are inserted ON CONFLICT DO NOTHING and only newly inserted frames get
-- their detection / track rows, so a redelivered message changes nothing.

CREATE TABLE frames (
    scenario_id     uuid NOT NULL,
    capture_time_ns bigint NOT NULL,
    channel_id      text NOT NULL,
    stream_epoch    bigint NOT NULL,
    sequence        bigint NOT NULL,
    capture_time    timestamptz GENERATED ALWAYS AS (to_timestamp(capture_time_ns::float8 / 1e9)) STORED,
    pts_us          bigint NOT NULL DEFAULT 0,
    width           integer NOT NULL DEFAULT 0,
    height          integer NOT NULL DEFAULT 0,
    model_name      text NOT NULL DEFAULT '',
    stats           bytea,                           -- vap.v1.InferenceStats
    publish_time_ns bigint NOT NULL DEFAULT 0,
    detection_count integer NOT NULL,
    PRIMARY KEY (scenario_id, capture_time_ns, channel_id, stream_epoch, sequence)
);

CREATE TABLE detections (
    scenario_id     uuid NOT NULL,
    capture_time_ns bigint NOT NULL,
    channel_id      text NOT NULL,
    stream_epoch    bigint NOT NULL,
    sequence        bigint NOT NULL,
    idx             integer NOT NULL,                -- position in FrameDetections.detections
    class_id        integer NOT NULL,
    class_name      text NOT NULL,
    confidence      real NOT NULL,
    x1 real NOT NULL, y1 real NOT NULL, x2 real NOT NULL, y2 real NOT NULL,
    attributes      jsonb,                           -- [{"name", "value", "confidence"}] or NULL
    PRIMARY KEY (scenario_id, capture_time_ns, channel_id, stream_epoch, sequence, idx)
);

CREATE TABLE tracked_frames (
    scenario_id     uuid NOT NULL,
    capture_time_ns bigint NOT NULL,
    channel_id      text NOT NULL,
    stream_epoch    bigint NOT NULL,
    sequence        bigint NOT NULL,
    capture_time    timestamptz GENERATED ALWAYS AS (to_timestamp(capture_time_ns::float8 / 1e9)) STORED,
    tracking_us     integer NOT NULL DEFAULT 0,
    publish_time_ns bigint NOT NULL DEFAULT 0,
    track_count     integer NOT NULL,
    PRIMARY KEY (scenario_id, capture_time_ns, channel_id, stream_epoch, sequence)
);

CREATE TABLE tracks (
    scenario_id         uuid NOT NULL,
    capture_time_ns     bigint NOT NULL,
    channel_id          text NOT NULL,
    stream_epoch        bigint NOT NULL,
    sequence            bigint NOT NULL,
    track_id            bigint NOT NULL,
    global_id           bigint NOT NULL DEFAULT 0,
    state               smallint NOT NULL,           -- vap.v1.TrackState
    class_id            integer NOT NULL,
    class_name          text NOT NULL,
    confidence          real NOT NULL,
    x1 real NOT NULL, y1 real NOT NULL, x2 real NOT NULL, y2 real NOT NULL,
    vx real NOT NULL DEFAULT 0, vy real NOT NULL DEFAULT 0,
    age                 integer NOT NULL DEFAULT 0,
    hits                integer NOT NULL DEFAULT 0,
    frames_since_update integer NOT NULL DEFAULT 0,
    attributes          jsonb,
    PRIMARY KEY (scenario_id, capture_time_ns, channel_id, stream_epoch, sequence, track_id)
);

CREATE TABLE events (
    scenario_id   uuid NOT NULL,
    event_id      text NOT NULL,                     -- deterministic (AnalyticsEvent.event_id): the dedupe key
    event_time_ns bigint NOT NULL,
    event_time    timestamptz GENERATED ALWAYS AS (to_timestamp(event_time_ns::float8 / 1e9)) STORED,
    channel_id    text NOT NULL,
    rule_id       text NOT NULL,
    kind          smallint NOT NULL,                 -- vap.v1.EventKind
    track_id      bigint NOT NULL,
    class_name    text NOT NULL,
    payload       bytea NOT NULL,                    -- the vap.v1.AnalyticsEvent as received
    PRIMARY KEY (scenario_id, event_id)
);
CREATE INDEX events_time ON events (scenario_id, event_time_ns, event_id);

CREATE TABLE counts (
    scenario_id       uuid NOT NULL,
    interval_start_ns bigint NOT NULL,
    rule_id           text NOT NULL,
    channel_id        text NOT NULL,
    interval_end_ns   bigint NOT NULL,
    interval_start    timestamptz GENERATED ALWAYS AS (to_timestamp(interval_start_ns::float8 / 1e9)) STORED,
    kind              text NOT NULL CHECK (kind IN ('line', 'zone')),
    a_to_b            bigint NOT NULL DEFAULT 0,
    b_to_a            bigint NOT NULL DEFAULT 0,
    enters            bigint NOT NULL DEFAULT 0,
    exits             bigint NOT NULL DEFAULT 0,
    max_occupancy     integer NOT NULL DEFAULT 0,
    mean_occupancy    real NOT NULL DEFAULT 0,
    loitering         bigint NOT NULL DEFAULT 0,
    mean_dwell_ms     bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (scenario_id, interval_start_ns, rule_id, channel_id)
);
