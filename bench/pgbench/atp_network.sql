-- The web shop's question: how many of a random sku across the whole network (every active location).
\set s random(1, :nskus)
\set l random(1, :nlocations)
SELECT possync.atp('SKU' || :s);
