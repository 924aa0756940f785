-- The same network question answered through SQL (possync.atp_checked, the path atp() takes for misuse).
\set s random(1, :nskus)
\set l random(1, :nlocations)
SELECT possync.atp_checked('SKU' || :s);
