//! Measures validating and planning a random 10,000-stage DAG; prints one
//! JSON object (`scripts/bench.sh` merges it into its own).

use orchestrator::definition::random::random_dag;
use std::time::Instant;

fn main() {
    let def = random_dag(10_000, 42);
    let mut runs_ms: Vec<f64> = (0..7)
        .map(|_| {
            let t = Instant::now();
            // Beyond the 256 stages a definition may have: the planner's
            // cost, not the limit, is measured.
            let plan = def.validate_within(10_000).expect("a random DAG is valid");
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            assert_eq!(plan.levels.iter().map(Vec::len).sum::<usize>(), 10_000);
            ms
        })
        .collect();
    runs_ms.sort_by(f64::total_cmp);
    // The median of seven runs: the first pays for cold caches.
    println!("{{\"dag_plan_ms_10k\": {:.2}}}", runs_ms[runs_ms.len() / 2]);
}
