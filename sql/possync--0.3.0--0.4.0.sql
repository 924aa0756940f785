-- possync 0.3.0 -> 0.4.0: apply lanes (one source applied in parallel sessions split by location, each with its
-- own checkpoint) and ledgers partitioned by business month (issue 15).
\echo Use "ALTER EXTENSION possync UPDATE TO '0.4.0'" to load this file. \quit
