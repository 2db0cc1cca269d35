-- Key scopes and tenant limits, and a change counter replicas poll to keep their key caches fresh.

-- Every insert or update of a key or tenant takes the next number; a replica asks for rows above
-- the highest it has seen, so a revocation reaches every replica's cache within one poll.
CREATE SEQUENCE key_changes;

ALTER TABLE api_keys ADD COLUMN name text NOT NULL DEFAULT '';
ALTER TABLE api_keys ALTER COLUMN scopes SET DEFAULT '{}';
ALTER TABLE api_keys ADD COLUMN change bigint NOT NULL DEFAULT nextval('key_changes');
CREATE INDEX api_keys_change ON api_keys (change);

ALTER TABLE tenants ADD COLUMN limits jsonb NOT NULL DEFAULT '{}';
ALTER TABLE tenants ADD COLUMN change bigint NOT NULL DEFAULT nextval('key_changes');
CREATE INDEX tenants_change ON tenants (change);
