//! A text description of everything the possync extension owns in a database, free of OIDs, so that two
//! installations (one upgraded, one fresh) can be compared line by line.

/// One line per object or property: relations and their options and grants, columns in order, constraints,
/// indexes, triggers, functions (definition, grants, settings), views, sequences, event triggers, the tables
/// pg_dump keeps, the schema's grants and comments.
pub const DESCRIBE_EXTENSION: &str = r#"
WITH ext AS (
    SELECT oid, extconfig, extcondition FROM pg_catalog.pg_extension WHERE extname = 'possync'
), members AS (
    SELECT d.classid, d.objid FROM pg_catalog.pg_depend d, ext
     WHERE d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'
), rels AS (
    SELECT c.* FROM pg_catalog.pg_class c JOIN members m ON m.classid = 'pg_catalog.pg_class'::regclass
       AND m.objid = c.oid
), described AS (
    SELECT format('relation %s kind=%s options=%s acl=%s persistence=%s', r.relname, r.relkind,
                  r.reloptions, r.relacl, r.relpersistence) AS line
      FROM rels r
    UNION ALL
    SELECT format('column %s #%s %s %s not_null=%s default=%s identity=%s generated=%s collation=%s',
                  r.relname, row_number() OVER (PARTITION BY r.oid ORDER BY a.attnum), a.attname,
                  pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull,
                  pg_catalog.pg_get_expr(d.adbin, d.adrelid), a.attidentity, a.attgenerated, a.attcollation)
      FROM rels r
      JOIN pg_catalog.pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped
      LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = r.oid AND d.adnum = a.attnum
    UNION ALL
    SELECT format('constraint %s %s %s', r.relname, c.conname, pg_catalog.pg_get_constraintdef(c.oid))
      FROM rels r JOIN pg_catalog.pg_constraint c ON c.conrelid = r.oid
    UNION ALL
    SELECT format('partitioned %s by %s', r.relname, pg_catalog.pg_get_partkeydef(r.oid))
      FROM rels r WHERE r.relkind = 'p'
    UNION ALL
    SELECT format('index %s', pg_catalog.pg_get_indexdef(i.indexrelid))
      FROM rels r JOIN pg_catalog.pg_index i ON i.indrelid = r.oid
    UNION ALL
    SELECT format('trigger %s enabled=%s', pg_catalog.pg_get_triggerdef(t.oid), t.tgenabled)
      FROM rels r JOIN pg_catalog.pg_trigger t ON t.tgrelid = r.oid AND NOT t.tgisinternal
    UNION ALL
    SELECT format('view %s %s', r.relname, pg_catalog.pg_get_viewdef(r.oid))
      FROM rels r WHERE r.relkind IN ('v', 'm')
    UNION ALL
    SELECT format('sequence %s type=%s start=%s increment=%s min=%s max=%s cycle=%s owned_by=%s', r.relname,
                  s.seqtypid::regtype, s.seqstart, s.seqincrement, s.seqmin, s.seqmax, s.seqcycle,
                  (SELECT format('%s.%s', dc.relname, da.attname)
                     FROM pg_catalog.pg_depend dd
                     JOIN pg_catalog.pg_class dc ON dc.oid = dd.refobjid
                     JOIN pg_catalog.pg_attribute da ON da.attrelid = dd.refobjid AND da.attnum = dd.refobjsubid
                    WHERE dd.classid = 'pg_catalog.pg_class'::regclass AND dd.objid = r.oid
                      AND dd.refclassid = 'pg_catalog.pg_class'::regclass AND dd.deptype IN ('a', 'i')))
      FROM rels r JOIN pg_catalog.pg_sequence s ON s.seqrelid = r.oid
    UNION ALL
    SELECT format('function %s definition=%s acl=%s', p.oid::regprocedure, pg_catalog.pg_get_functiondef(p.oid),
                  p.proacl)
      FROM members m JOIN pg_catalog.pg_proc p ON m.classid = 'pg_catalog.pg_proc'::regclass AND p.oid = m.objid
    UNION ALL
    SELECT format('event_trigger %s on %s tags=%s function=%s enabled=%s', e.evtname, e.evtevent, e.evttags,
                  e.evtfoid::regproc, e.evtenabled)
      FROM members m JOIN pg_catalog.pg_event_trigger e
        ON m.classid = 'pg_catalog.pg_event_trigger'::regclass AND e.oid = m.objid
    UNION ALL
    SELECT format('type %s', t.oid::regtype)
      FROM members m JOIN pg_catalog.pg_type t ON m.classid = 'pg_catalog.pg_type'::regclass AND t.oid = m.objid
    UNION ALL
    SELECT format('dumped %s where=%s', cfg.rel::regclass, coalesce(cond.c, ''))
      FROM ext, unnest(ext.extconfig) WITH ORDINALITY AS cfg(rel, n)
      LEFT JOIN unnest(ext.extcondition) WITH ORDINALITY AS cond(c, n) ON cond.n = cfg.n
    UNION ALL
    SELECT format('schema %s owner_is_extension_owner acl=%s', n.nspname, n.nspacl)
      FROM pg_catalog.pg_namespace n WHERE n.nspname = 'possync'
    UNION ALL
    SELECT format('comment %s %s', d.classoid::regclass, d.description)
      FROM members m JOIN pg_catalog.pg_description d ON d.classoid = m.classid AND d.objoid = m.objid
)
SELECT line FROM described ORDER BY line
"#;

/// The partitions of possync's partitioned tables, described as one shape per parent: which months they hold
/// (one each), their columns, constraints, indexes and triggers with the partition's own name written as
/// `<partition>`, their owner and whether they belong to the extension (they never do). Partitions exist for the
/// months that hold data, so this is compared between databases that posted, apart from the extension's catalog.
pub const DESCRIBE_PARTITIONS: &str = r#"
WITH parts AS (
    SELECT p.relname AS parent, p.relowner AS parent_owner, c.*
      FROM pg_catalog.pg_inherits i
      JOIN pg_catalog.pg_class p ON p.oid = i.inhparent
      JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
     WHERE p.relnamespace = 'possync'::regnamespace AND p.relkind = 'p'
), described AS (
    SELECT format('partition of %s: name=%s bound=%s kind=%s options=%s acl=%s owner_is_parents=%s member=%s',
                  c.parent,
                  CASE WHEN c.relname ~ ('^' || c.parent || '_[0-9]{4}_[0-9]{2}$') THEN '<parent>_YYYY_MM' ELSE c.relname END,
                  CASE WHEN pg_catalog.pg_get_expr(c.relpartbound, c.oid)
                            ~ '^FOR VALUES FROM \(''[0-9]{4}-[0-9]{2}-01''\) TO \(''[0-9]{4,5}-[0-9]{2}-01''\)$'
                       THEN 'a month' ELSE pg_catalog.pg_get_expr(c.relpartbound, c.oid) END,
                  c.relkind, c.reloptions, c.relacl, c.relowner = c.parent_owner,
                  EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                           WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e'))
           AS line
      FROM parts c
    UNION ALL
    SELECT format('partition of %s: column #%s %s %s not_null=%s default=%s', c.parent,
                  row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum), a.attname,
                  pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull,
                  pg_catalog.pg_get_expr(d.adbin, d.adrelid))
      FROM parts c
      JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
      LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
    UNION ALL
    SELECT format('partition of %s: constraint %s %s', c.parent, replace(k.conname, c.relname, '<partition>'),
                  pg_catalog.pg_get_constraintdef(k.oid))
      FROM parts c JOIN pg_catalog.pg_constraint k ON k.conrelid = c.oid
    UNION ALL
    SELECT format('partition of %s: %s', c.parent, replace(pg_catalog.pg_get_indexdef(i.indexrelid), c.relname, '<partition>'))
      FROM parts c JOIN pg_catalog.pg_index i ON i.indrelid = c.oid
    UNION ALL
    SELECT format('partition of %s: trigger %s enabled=%s', c.parent,
                  replace(pg_catalog.pg_get_triggerdef(t.oid), c.relname, '<partition>'), t.tgenabled)
      FROM parts c JOIN pg_catalog.pg_trigger t ON t.tgrelid = c.oid AND NOT t.tgisinternal
)
SELECT DISTINCT line FROM described ORDER BY line
"#;

/// The rows of every table possync writes, as one digest per table (ordered, so equal rows give equal digests).
pub const LEDGER_TABLES: [&str; 16] = [
    "event",
    "stock_move",
    "stock_balance",
    "journal",
    "journal_line",
    "exception",
    "source",
    "transfer",
    "transfer_line",
    "count_line",
    "reservation",
    "supply",
    "supply_receipt",
    "register_state",
    "audited_day",
    "account_map",
];
