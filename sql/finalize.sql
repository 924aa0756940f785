-- possync: SQL-level wrappers, the default chart, views and privileges. Runs after the Rust functions exist.

-- The bridge's exactly-once door. The Rust function takes the LSN as text (pgrx has no pg_lsn type);
-- this wrapper keeps the contract's signature. SECURITY DEFINER so that a role granted only this function
-- (possync.grant_bridge) can post without privileges on the ledger tables.
CREATE FUNCTION apply_batch(source text, commit_lsn pg_lsn, events jsonb) RETURNS jsonb
    LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$ SELECT possync.apply_batch_at(source, commit_lsn::text, events) $$;

-- Where a source's stream must resume: the commit LSN of the last POS transaction the ERP committed.
CREATE FUNCTION source_checkpoint(source text) RETURNS pg_lsn
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF source IS NULL THEN
        RAISE EXCEPTION 'possync.source_checkpoint: argument source must not be NULL'
            USING ERRCODE = 'null_value_not_allowed', HINT = 'pass the source name the bridge streams as';
    END IF;
    RETURN coalesce((SELECT s.checkpoint FROM possync.source s WHERE s.source_id = source), '0/0'::pg_lsn);
END
$$;

-- The default retail chart and its role mapping; returns how many accounts it added (0 when present).
CREATE FUNCTION install_default_chart() RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    added integer;
BEGIN
    INSERT INTO possync.account (account_code, name, kind) VALUES
        ('1000', 'Cash', 'asset'),
        ('1010', 'Card and other tenders receivable', 'asset'),
        ('1200', 'Inventory', 'asset'),
        ('1210', 'Inventory in transit', 'asset'),
        ('2100', 'Sales tax payable', 'liability'),
        ('2200', 'Goods received not invoiced', 'liability'),
        ('2300', 'Customer deposits', 'liability'),
        ('4000', 'Sales revenue', 'revenue'),
        ('4100', 'Sales returns', 'revenue'),
        ('5000', 'Cost of goods sold', 'expense'),
        ('5100', 'Inventory shrink', 'expense'),
        ('5200', 'Cash over and short', 'expense')
    ON CONFLICT (account_code) DO NOTHING;
    GET DIAGNOSTICS added = ROW_COUNT;
    INSERT INTO possync.account_map (role, account_code)
    SELECT r, c FROM (VALUES
        ('tender:cash', '1000'), ('tender:*', '1010'), ('inventory', '1200'), ('in_transit', '1210'),
        ('tax_payable', '2100'), ('grni', '2200'), ('customer_deposits', '2300'), ('revenue', '4000'),
        ('returns', '4100'), ('cogs', '5000'), ('shrink', '5100'), ('over_short', '5200')) AS m(r, c)
    WHERE NOT EXISTS (SELECT 1 FROM possync.account_map a
                       WHERE a.role = m.r AND a.location_id IS NULL AND a.item_class IS NULL);
    RETURN added;
END
$$;

-- Debits and credits per account (and location): the ledger's own trial balance.
CREATE VIEW trial_balance AS
SELECT l.account_code, a.name, a.kind, l.location_id,
       sum(l.debit) AS debit, sum(l.credit) AS credit, sum(l.debit) - sum(l.credit) AS balance
  FROM possync.journal_line l
  JOIN possync.account a USING (account_code)
 GROUP BY l.account_code, a.name, a.kind, l.location_id;

-- Per source: where it stands and what it left behind.
CREATE VIEW source_status AS
SELECT s.source_id, s.checkpoint, s.applied_at, s.events_applied,
       (SELECT count(*) FROM possync.event e WHERE e.source = s.source_id AND e.status = 'held') AS held,
       (SELECT count(*) FROM possync.exception x JOIN possync.event e USING (event_id)
         WHERE e.source = s.source_id AND x.status = 'open') AS open_exceptions
  FROM possync.source s;

-- Nothing is granted to PUBLIC; roles get what they need through these two functions.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA possync FROM PUBLIC;

CREATE FUNCTION grant_bridge(role_name regrole) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF role_name IS NULL THEN
        RAISE EXCEPTION 'possync.grant_bridge: argument role must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA possync TO %s', role_name);
    EXECUTE format('GRANT EXECUTE ON FUNCTION possync.apply_batch(text, pg_lsn, jsonb), '
                   'possync.source_checkpoint(text) TO %s', role_name);
END
$$;

CREATE FUNCTION grant_reader(role_name regrole) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    f text;
BEGIN
    IF role_name IS NULL THEN
        RAISE EXCEPTION 'possync.grant_reader: argument role must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA possync TO %s', role_name);
    FOR f IN SELECT p.oid::regprocedure::text FROM pg_proc p
              WHERE p.pronamespace = 'possync'::regnamespace AND p.proname IN ('atp', 'atp_checked', 'atp_detail', 'reconcile', 'check_invariants', 'trace') LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %s', f, role_name);
    END LOOP;
    EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA possync TO %s', role_name);
END
$$;
REVOKE ALL ON FUNCTION grant_bridge(regrole), grant_reader(regrole) FROM PUBLIC;
