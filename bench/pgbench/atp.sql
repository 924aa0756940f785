-- One Available-to-Promise question for a random sku at a random store.
\set s random(1, :nskus)
\set l random(1, :nlocations)
SELECT possync.atp('SKU' || :s, 'L' || :l);
