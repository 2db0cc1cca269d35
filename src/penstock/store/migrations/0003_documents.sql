-- Documents and their chunks for retrieval: a pgvector column under an HNSW index for dense search,
-- a tsvector column under a GIN index for full-text search. Every chunk carries its tenant,
-- collection, source, document version and ACL, so each search filters inside its own SQL.

CREATE TABLE documents (
    id            bigserial PRIMARY KEY,
    tenant_id     text NOT NULL,
    collection    text NOT NULL,
    source        text NOT NULL,
    version       integer NOT NULL CHECK (version > 0),
    content_hash  text NOT NULL,
    acl_groups    text[] NOT NULL DEFAULT '{}',
    acl_users     text[] NOT NULL DEFAULT '{}',
    chunk_count   integer NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    retired_at    timestamptz  -- set when a newer version replaced this one, or it was deleted
);
-- At most one live version per source; older versions stay as history, their chunks are gone.
CREATE UNIQUE INDEX documents_live ON documents (tenant_id, collection, source) WHERE retired_at IS NULL;

CREATE TABLE chunks (
    id            bigserial PRIMARY KEY,
    document_id   bigint NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    tenant_id     text NOT NULL,
    collection    text NOT NULL,
    source        text NOT NULL,
    version       integer NOT NULL,
    ordinal       integer NOT NULL,
    heading       text NOT NULL DEFAULT '',
    body          text NOT NULL,
    tokens        integer NOT NULL,
    content_hash  text NOT NULL,
    -- Readable by the whole tenant when both lists are empty; otherwise by the listed users and groups.
    acl_groups    text[] NOT NULL DEFAULT '{}',
    acl_users     text[] NOT NULL DEFAULT '{}',
    embedding     vector(384) NOT NULL,
    search_text   tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('english', heading), 'A') || setweight(to_tsvector('english', body), 'B')
    ) STORED
);
CREATE INDEX chunks_embedding ON chunks USING hnsw (embedding vector_cosine_ops);
CREATE INDEX chunks_search_text ON chunks USING gin (search_text);
CREATE INDEX chunks_scope ON chunks (tenant_id, collection);
CREATE INDEX chunks_document ON chunks (document_id);
