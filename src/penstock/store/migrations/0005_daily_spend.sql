-- Each tenant's tokens and cost per UTC day, kept by the database as ledger rows arrive.

-- The quota book re-reads every tenant's spend for the month every few seconds on every replica.
-- Summed from the ledger, that read grows with the month's requests; summed from here it reads at
-- most 31 rows per tenant. The trigger keeps the two in one transaction, whoever writes the ledger
-- (a replica of an older version too), and sees only rows the insert kept: a replayed row that the
-- ledger skips as a duplicate is not counted twice.
CREATE TABLE tenant_daily_spend (
    tenant_id  text NOT NULL,
    day        date NOT NULL,  -- UTC
    tokens     bigint NOT NULL DEFAULT 0,
    cost       numeric NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, day)
);

CREATE FUNCTION tenant_daily_spend_add() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Sorted, so two replicas' batches lock the same (tenant, day) rows in the same order.
    INSERT INTO tenant_daily_spend AS spend (tenant_id, day, tokens, cost)
    SELECT tenant_id, (created_at AT TIME ZONE 'UTC')::date, sum(prompt_tokens + completion_tokens), sum(cost)
    FROM added GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (tenant_id, day)
    DO UPDATE SET tokens = spend.tokens + excluded.tokens, cost = spend.cost + excluded.cost;
    RETURN NULL;
END
$$;

-- No ledger writes between the backfill's read and the trigger taking over.
LOCK TABLE usage_ledger IN SHARE ROW EXCLUSIVE MODE;

CREATE TRIGGER usage_ledger_daily_spend AFTER INSERT ON usage_ledger
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION tenant_daily_spend_add();

INSERT INTO tenant_daily_spend (tenant_id, day, tokens, cost)
SELECT tenant_id, (created_at AT TIME ZONE 'UTC')::date, sum(prompt_tokens + completion_tokens), sum(cost)
FROM usage_ledger GROUP BY 1, 2;
