//! What the independent QUIC peers (`quinn-peer`, `s2n-peer`) share: the command-line
//! contract, the `perf` and `hq-interop` protocols over any stack's stream halves, the JSON
//! report and the rustls configuration. Each peer binary keeps only what is specific to its
//! QUIC stack (endpoints, connections, accepting streams), so a protocol fix lands in both.

pub mod args;
pub mod datagram;
pub mod hq;
pub mod perf;
pub mod report;
pub mod serve;
pub mod stream;
pub mod tls;

/// The `index`-th of `parts` near-equal shares of `total`: `--down`/`--up` are totals for a
/// run, split over all its streams (the first streams take the remainder).
pub fn share(total: u64, parts: u64, index: u64) -> u64 {
    total / parts + u64::from(index < total % parts)
}

#[cfg(test)]
mod tests {
    use super::share;

    #[test]
    fn shares_add_up_and_differ_by_at_most_one() {
        for (total, parts) in [(0, 1), (10, 3), (100 << 20, 100), (7, 10), (u64::MAX, 7)] {
            let shares: Vec<u64> = (0..parts).map(|i| share(total, parts, i)).collect();
            let sum: u128 = shares.iter().map(|&s| u128::from(s)).sum();
            assert_eq!(sum, u128::from(total));
            let (min, max) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
            assert!(max - min <= 1);
        }
    }
}
