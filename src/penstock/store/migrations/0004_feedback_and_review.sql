-- Feedback on answered requests, and the redacted review sample of prompts and completions.

-- One verdict per request (a later one replaces it). No foreign key to the ledger: feedback can
-- arrive before the request's ledger row is flushed, and the quality figures join the two.
CREATE TABLE feedback (
    request_id  text PRIMARY KEY,
    tenant_id   text NOT NULL,
    key_id      text,
    rating      smallint NOT NULL CHECK (rating BETWEEN -1 AND 1),  -- -1 bad, 0 neutral, 1 good
    escalated   boolean NOT NULL DEFAULT false,                     -- handed to a human
    comment     text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX feedback_tenant_created ON feedback (tenant_id, created_at);

-- A configurable fraction of requests, redacted before they are written; admin keys only.
CREATE TABLE review_samples (
    request_id  text PRIMARY KEY,
    tenant_id   text NOT NULL,
    deployment  text,
    route       text NOT NULL,
    prompt      jsonb NOT NULL,
    completion  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX review_samples_created ON review_samples (created_at);
