-- Why the router sent each request where it went (requested, default, rule:<name>, weight, overflow,
-- fallback:<what failed>): the ledger answers "who answered and why" as the response header did.
ALTER TABLE usage_ledger ADD COLUMN route_reason text;
