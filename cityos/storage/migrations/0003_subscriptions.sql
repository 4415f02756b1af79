-- Subscriptions, their delivery counters, and the notification outbox that change hooks fill
-- in the entity write's transaction. Several senders (one per worker) share the outbox: a
-- sender leases a subscription (sender, lease_until) and claims its rows (claimed_by), so each
-- notification is handed to one sender, and one subscription's go out one after another.
CREATE TABLE subscriptions(
    -- creation order, which listings follow
    rid bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant text COLLATE "C" NOT NULL,
    id text COLLATE "C" NOT NULL,
    -- json, not jsonb: the document comes back with its members in the order they were written
    doc json NOT NULL,
    times_sent integer NOT NULL DEFAULT 0,
    times_failed integer NOT NULL DEFAULT 0,
    last_notification text,
    last_success text,
    last_failure text,
    -- the sender delivering this subscription's notifications, until its lease runs out
    sender text,
    lease_until timestamptz,
    UNIQUE(tenant, id)
);

CREATE TABLE notification_outbox(
    -- never reused: one subscription's notifications go out in seq order
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant text COLLATE "C" NOT NULL,
    sub_id text COLLATE "C" NOT NULL,
    payload json NOT NULL,
    -- the sender this notification was handed to (NULL: not yet handed out)
    claimed_by text
);
CREATE INDEX notification_outbox_sub ON notification_outbox(tenant, sub_id, seq);
