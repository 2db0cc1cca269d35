-- Tenants, their API keys, and the usage ledger: what the gateway and the ledger need first.

CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE tenants (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Only a hash of each key is stored; the prefix lets people tell their keys apart.
CREATE TABLE api_keys (
    id          text PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    key_hash    text NOT NULL UNIQUE,
    prefix      text NOT NULL,
    scopes      jsonb NOT NULL DEFAULT '[]',
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,
    revoked_at  timestamptz
);
CREATE INDEX api_keys_tenant_id ON api_keys (tenant_id);

-- One row per request. No foreign keys: a ledger write must never fail because a tenant or key was
-- deleted meanwhile, and usage history outlives both. deployment and model stay empty for requests
-- rejected before routing.
CREATE TABLE usage_ledger (
    request_id         text PRIMARY KEY,
    tenant_id          text NOT NULL,
    key_id             text,
    deployment         text,
    model              text,
    route              text NOT NULL,
    prompt_tokens      integer NOT NULL DEFAULT 0 CHECK (prompt_tokens >= 0),
    completion_tokens  integer NOT NULL DEFAULT 0 CHECK (completion_tokens >= 0),
    cost               numeric NOT NULL DEFAULT 0,
    latency_ms         double precision,
    stage_ms           jsonb NOT NULL DEFAULT '{}',
    status             text NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX usage_ledger_tenant_created ON usage_ledger (tenant_id, created_at);
