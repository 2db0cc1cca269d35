-- Deployments and routes changed at run time through the admin API: each replica overlays them on its
-- config file's and polls the change counter to pick them up. A delete leaves a row with no body, so
-- replicas learn of it too.
CREATE SEQUENCE router_changes;

CREATE TABLE router_objects (
    kind        text NOT NULL CHECK (kind IN ('deployment', 'route')),
    name        text NOT NULL,
    body        jsonb,
    change      bigint NOT NULL DEFAULT nextval('router_changes'),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, name)
);
CREATE INDEX router_objects_change ON router_objects (change);
