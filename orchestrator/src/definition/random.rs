//! Random workflow definitions for tests and benchmarks: `n` stages, each
//! depending on up to three random earlier ones, listed in shuffled order.
//! Deterministic for a seed (xorshift64), so a failure can be replayed.

use super::{Definition, StageDef};

/// xorshift64: deterministic and good enough to shape graphs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A valid (acyclic) definition named `random` with `n` stages `s0…`, run by
/// agent `work`. `seed` must not be 0.
pub fn random_dag(n: usize, seed: u64) -> Definition {
    let mut rng = Rng(seed.max(1));
    let mut stages: Vec<StageDef> = (0..n)
        .map(|i| {
            let mut deps: Vec<String> = Vec::new();
            if i > 0 {
                for _ in 0..rng.below(4) {
                    let d = format!("s{}", rng.below(i));
                    if !deps.contains(&d) {
                        deps.push(d);
                    }
                }
            }
            StageDef {
                name: format!("s{i}"),
                agent: "work".to_owned(),
                depends_on: deps,
                timeout: None,
                max_attempts: None,
                compensate: None,
                approval: false,
                approval_timeout: None,
            }
        })
        .collect();
    for i in (1..n).rev() {
        stages.swap(i, rng.below(i + 1));
    }
    Definition {
        name: "random".to_owned(),
        version: 1,
        description: None,
        stages,
    }
}
