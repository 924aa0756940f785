-- The floor: one round trip that does nothing, from the same clients as atp.sql.
\set s random(1, :nskus)
\set l random(1, :nlocations)
SELECT 1;
