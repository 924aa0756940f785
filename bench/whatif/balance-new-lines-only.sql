-- What-if for BENCH_EXTRA_SQL (see bench/README.md): the balanced-journal trigger checks the statement's new lines
-- only. That is enough because ledgers are append-only: if every statement's new lines balance per journal, every
-- journal balances after every statement. It never reads journal_line, so its cost does not grow with the table
-- and no cached plan can turn into a scan of it. Applied to possync and to the baseline alike.
CREATE OR REPLACE FUNCTION possync.journal_must_balance() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    SELECT n.journal_id, sum(n.debit) AS debits, sum(n.credit) AS credits INTO bad
      FROM new_lines n
     GROUP BY n.journal_id
    HAVING sum(n.debit) <> sum(n.credit)
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'journal % does not balance: debits % and credits %', bad.journal_id, bad.debits, bad.credits
            USING ERRCODE = 'check_violation',
                  HINT = 'insert all lines of a journal in one statement, with total debits equal to total credits';
    END IF;
    RETURN NULL;
END
$$;
CREATE OR REPLACE FUNCTION baseline.journal_must_balance() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    SELECT n.journal_id, sum(n.debit) AS debits, sum(n.credit) AS credits INTO bad
      FROM new_lines n
     GROUP BY n.journal_id
    HAVING sum(n.debit) <> sum(n.credit)
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'journal % does not balance: debits % and credits %', bad.journal_id, bad.debits, bad.credits
            USING ERRCODE = 'check_violation',
                  HINT = 'insert all lines of a journal in one statement, with total debits equal to total credits';
    END IF;
    RETURN NULL;
END
$$;
