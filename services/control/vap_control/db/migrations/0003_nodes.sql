-- 0003: scale-out across hosts. A node is a decoder agent plus the inference service sharing its host's
-- shared memory; its agent registers the node's capacity with every heartbeat (vap.v1.NodeCapacity), and
-- placement (vap_control.placement) reads it from here.

-- Node registration, from AgentStatus.capacity.
ALTER TABLE agents
    ADD COLUMN labels     jsonb  NOT NULL DEFAULT '{}',  -- NodeCapacity.labels (Scenario.node_selector)
    ADD COLUMN backend    text   NOT NULL DEFAULT '',    -- inference backend of the node
    ADD COLUMN models     text[] NOT NULL DEFAULT '{}',  -- models the node serves; empty = any
    ADD COLUMN shm_prefix text   NOT NULL DEFAULT '';    -- ring-name prefix of the node
CREATE INDEX agents_node ON agents (node_id);

-- Operator decisions about nodes, kept apart from the heartbeat-written agents rows so a heartbeat can
-- never undo a drain.
CREATE TABLE nodes (
    node_id    text PRIMARY KEY,
    -- Drained: no new placements; the reconcile moves its running scenarios to other nodes.
    draining   boolean NOT NULL DEFAULT false,
    drain_time timestamptz
);
