//! The retailer: stores with registers, a DC, an online channel, and a catalogue of SKUs with prices, costs,
//! tax codes and Zipf-like popularity.

use std::collections::HashMap;

use rust_decimal::{Decimal, RoundingStrategy};

use crate::rng::Rng;

/// Tax codes: (code, rate, description). The ERP gets the same table from `setup-erp`.
pub const TAX_CODES: [(&str, &str, &str); 3] = [
    ("STD", "0.08875", "standard rate"),
    ("RED", "0.04", "reduced rate"),
    ("EXEMPT", "0", "exempt"),
];

/// Item classes: (class, lowest price in cents, highest price in cents, tax code index).
const CLASSES: [(&str, i64, i64, usize); 6] = [
    ("apparel", 999, 8999, 0),
    ("footwear", 2999, 14999, 0),
    ("accessories", 299, 3999, 0),
    ("home", 499, 12999, 0),
    ("beauty", 399, 4999, 1),
    ("grocery", 99, 1499, 2),
];

pub const DC: &str = "DC1";
pub const ONLINE: &str = "WEB";

/// Size of the simulated retailer; the same figures give the same catalogue and network.
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    pub seed: u64,
    pub stores: u32,
    pub registers: u32,
    pub skus: u32,
}

#[derive(Debug, Clone)]
pub struct Item {
    pub sku: String,
    pub description: String,
    pub class: &'static str,
    pub price: Decimal,
    pub cost: Decimal,
    pub tax: usize,
    /// On the "buy 2, 15 % off" promotion.
    pub promoted: bool,
}

impl Item {
    pub fn tax_code(&self) -> &'static str {
        TAX_CODES[self.tax].0
    }

    pub fn tax_rate(&self) -> Decimal {
        TAX_CODES[self.tax].1.parse().unwrap_or_default()
    }
}

/// Money rounding used everywhere: cents, half away from zero.
pub fn cents(d: Decimal) -> Decimal {
    d.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
}

/// Everything sold, and how often.
#[derive(Debug)]
pub struct Catalog {
    pub items: Vec<Item>,
    /// Items the ERP does not know yet (added late by `late-items`): sales of them are held until then.
    pub late: Vec<Item>,
    /// Item index by popularity rank (rank 0 sells most).
    pub by_rank: Vec<usize>,
    /// Integer Zipf weight (s = 1) per rank: 1e9 / (rank + 1).
    pub weight: Vec<u64>,
    /// Running sum of `weight`, for sampling by binary search.
    cumulative: Vec<u64>,
    index: HashMap<String, usize>,
}

impl Catalog {
    pub fn new(scale: &Scale) -> Catalog {
        let mut rng = Rng::new(scale.seed).fork(1);
        let n = scale.skus.max(10) as usize;
        let item = |i: usize, prefix: &str, rng: &mut Rng| {
            let (class, lo, hi, tax) = CLASSES[rng.below(CLASSES.len() as u64) as usize];
            // prices end in .99 or .49, like shelf prices
            let dollars = rng.between(lo / 100, hi / 100);
            let price = Decimal::new(dollars * 100 + if rng.chance(500) { 99 } else { 49 }, 2);
            let margin = rng.between(35, 65);
            let cost = cents(price * Decimal::new(margin, 2));
            Item {
                sku: format!("{prefix}{i:05}"),
                description: format!("{class} item {i}"),
                class,
                price,
                cost,
                tax,
                promoted: rng.chance(60),
            }
        };
        let items: Vec<Item> = (1..=n).map(|i| item(i, "SKU-", &mut rng)).collect();
        let late = (1..=3).map(|i| item(i, "NEW-", &mut rng)).collect();
        // popularity is unrelated to the sku number: a Fisher-Yates shuffle assigns ranks
        let mut by_rank: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            by_rank.swap(i, j);
        }
        let weight: Vec<u64> = (0..n as u64).map(|r| 1_000_000_000 / (r + 1)).collect();
        let cumulative = weight
            .iter()
            .scan(0u64, |acc, w| {
                *acc += w;
                Some(*acc)
            })
            .collect();
        let index = items
            .iter()
            .enumerate()
            .map(|(i, it)| (it.sku.clone(), i))
            .collect();
        Catalog {
            index,
            items,
            late,
            by_rank,
            weight,
            cumulative,
        }
    }

    pub fn total_weight(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(1)
    }

    /// An item index drawn by popularity.
    pub fn sample(&self, rng: &mut Rng) -> usize {
        let r = rng.below(self.total_weight());
        let rank = self.cumulative.partition_point(|&c| c <= r);
        self.by_rank[rank.min(self.by_rank.len() - 1)]
    }

    /// The item index of a sku of the catalogue (late items are not in it).
    pub fn index_of(&self, sku: &str) -> Option<usize> {
        self.index.get(sku).copied()
    }

    /// Weight of a popularity rank.
    pub fn weight_of_rank(&self, rank: usize) -> u64 {
        self.weight[rank]
    }

    /// The `n` best sellers' item indexes, best first.
    pub fn best_sellers(&self, n: usize) -> Vec<usize> {
        self.by_rank.iter().take(n).copied().collect()
    }
}

/// The stores, the DC and the online channel.
#[derive(Debug, Clone)]
pub struct Network {
    pub stores: Vec<String>,
    pub registers: u32,
}

impl Network {
    pub fn new(scale: &Scale) -> Network {
        Network {
            stores: (1..=scale.stores.max(1))
                .map(|i| format!("S{i:03}"))
                .collect(),
            registers: scale.registers.max(1),
        }
    }

    /// (location_id, name, kind) for the ERP's location table.
    pub fn locations(&self) -> Vec<(String, String, &'static str)> {
        let mut v: Vec<_> = self
            .stores
            .iter()
            .map(|s| (s.clone(), format!("Store {}", &s[1..]), "store"))
            .collect();
        v.push((DC.into(), "Distribution centre".into(), "dc"));
        v.push((ONLINE.into(), "Web shop".into(), "online"));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scale() -> Scale {
        Scale {
            seed: 42,
            stores: 3,
            registers: 2,
            skus: 500,
        }
    }

    #[test]
    fn the_catalogue_is_deterministic_and_priced_in_cents() {
        let a = Catalog::new(&scale());
        let b = Catalog::new(&scale());
        assert_eq!(a.items.len(), 500);
        for (x, y) in a.items.iter().zip(&b.items) {
            assert_eq!((x.price, x.cost, x.tax), (y.price, y.cost, y.tax));
            assert_eq!(x.price.scale(), 2);
            assert!(x.cost < x.price && x.cost > Decimal::ZERO);
        }
        assert_eq!(a.by_rank, b.by_rank);
    }

    #[test]
    fn sampling_follows_the_zipf_weights() {
        let c = Catalog::new(&scale());
        let mut rng = Rng::new(3);
        let mut counts = vec![0u32; c.items.len()];
        for _ in 0..100_000 {
            counts[c.sample(&mut rng)] += 1;
        }
        let best = c.by_rank[0];
        let tenth = c.by_rank[9];
        // weight ratio 10:1, and rank 0 holds 1/H(500) ≈ 14.7 % of draws
        let ratio = f64::from(counts[best]) / f64::from(counts[tenth]);
        assert!((7.0..13.0).contains(&ratio), "ratio {ratio}");
        assert!((13_000..16_500).contains(&counts[best]), "{}", counts[best]);
    }
}
