-- A counter every change to a subscription raises in its own transaction. With several workers,
-- a write first reads it: when it moved since the worker last loaded the subscriptions, the
-- worker reloads them before matching, so every write committed after a subscription is
-- matched against it, whichever worker made either.

CREATE TABLE subscription_generation(
    id int PRIMARY KEY CHECK (id = 1),
    n bigint NOT NULL
);
INSERT INTO subscription_generation VALUES (1, 0);
