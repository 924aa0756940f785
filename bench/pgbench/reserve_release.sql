-- A web order holds one unit and lets it go: one reserve and one release, each its own transaction.
\set s random(1, :nskus)
\set l random(1, :nlocations)
\set r random(1, 1000000000000)
SELECT possync.reserve('bench-' || :client_id || '-' || :r, 'SKU' || :s, 'L' || :l, 1, now() + interval '30 minutes');
SELECT possync.release('bench-' || :client_id || '-' || :r);
