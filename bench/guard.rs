//! `trunkline-bench guard`: the regression check CI runs. It replays short versions of
//! the durable scenarios against the release binary and compares the server's CPU time per
//! message with the figures recorded in `bench/guard.json`, scaled by how fast this machine
//! runs a fixed piece of work compared with the machine the figures came from.
//!
//! Wall time is never compared. A check fails only when its best of `--runs` runs is
//! still more than `factor` times the recorded figure: a large regression that repeats,
//! not noise on a shared machine.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

#[derive(clap::Args, Clone, Debug)]
pub struct GuardArgs {
    /// The `trunkline` server binary (a release build).
    #[arg(long)]
    pub server_bin: PathBuf,
    /// The recorded figures.
    #[arg(long, default_value = "bench/guard.json")]
    pub baseline: PathBuf,
    /// Runs per check at most (it passes at the first run within its limit).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Print what this machine measures, in the baseline's format, instead of checking.
    #[arg(long)]
    pub record: bool,
}

#[derive(Deserialize)]
struct Baseline {
    /// How much worse than recorded a check may be before it fails.
    factor: f64,
    /// Milliseconds the calibration work took on the recording machine.
    calibration_ms: f64,
    checks: Vec<Check>,
}

#[derive(Deserialize)]
struct Check {
    name: String,
    /// trunkline-bench arguments (`--server-bin` and `--json` are added).
    args: Vec<String>,
    cpu_us_per_msg: f64,
}

/// A fixed piece of CPU and memory work (sorting and hashing 1M numbers): how fast this
/// machine is, best of five, in milliseconds.
fn calibrate() -> f64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    let mut best = f64::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut v: Vec<u64> = (0..1_000_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            })
            .collect();
        v.sort_unstable();
        let h = BuildHasherDefault::<DefaultHasher>::default();
        let sum = v.iter().fold(0u64, |a, n| a ^ h.hash_one(n));
        std::hint::black_box(sum);
        best = best.min(start.elapsed().as_secs_f64() * 1e3);
    }
    best
}

/// One run's server CPU µs per message, and its commits per message where the scenario
/// reports them (CPU per message falls as commits batch more messages, so a disk that
/// syncs faster, which batches less, shows as more CPU per message).
fn measure(server_bin: &Path, args: &[String]) -> Result<(f64, Option<f64>)> {
    let exe = std::env::current_exe().context("cannot find trunkline-bench itself")?;
    let json = tempfile::NamedTempFile::new()?;
    let out = Command::new(exe)
        .args(args)
        .arg("--server-bin")
        .arg(server_bin)
        .arg("--json")
        .arg(json.path())
        .output()
        .context("cannot run trunkline-bench")?;
    if !out.status.success() {
        bail!(
            "`trunkline-bench {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(json.path())?)?;
    let cpu = report["server_cpu_us_per_msg"]
        .as_f64()
        .context("the report has no server_cpu_us_per_msg")?;
    Ok((cpu, report["commits_per_msg"].as_f64()))
}

/// Whether the best run stays within the recorded figure × factor × machine speed.
fn verdict(best: f64, recorded: f64, factor: f64, speed: f64) -> (f64, bool) {
    let limit = recorded * factor * speed;
    (limit, best <= limit)
}

pub fn run(a: &GuardArgs) -> Result<bool> {
    let text = std::fs::read_to_string(&a.baseline)
        .with_context(|| format!("cannot read {}", a.baseline.display()))?;
    let base: Baseline = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a guard baseline", a.baseline.display()))?;
    let calibration = calibrate();
    // Slower machines get proportionally more room, never less than recorded.
    let speed = (calibration / base.calibration_ms).max(1.0);
    println!(
        "calibration: {calibration:.1} ms here, {:.1} ms when recorded (allowance x{speed:.2})",
        base.calibration_ms
    );
    let mut ok = true;
    for check in &base.checks {
        let mut best = f64::MAX;
        let mut seen = Vec::new();
        let mut pass = false;
        let mut limit = 0.0;
        for _ in 0..a.runs.max(1) {
            let (cpu, commits) = measure(&a.server_bin, &check.args)?;
            seen.push(match commits {
                Some(c) => format!("{cpu:.1} µs/msg at {c:.2} commits/msg"),
                None => format!("{cpu:.1} µs/msg"),
            });
            best = best.min(cpu);
            (limit, pass) = verdict(best, check.cpu_us_per_msg, base.factor, speed);
            if pass && !a.record {
                break;
            }
        }
        if a.record {
            println!(
                "{}: best {best:.1} µs/msg (runs: {})",
                check.name,
                seen.join(", ")
            );
            continue;
        }
        println!(
            "{}: {} server CPU (recorded {:.1}, limit {limit:.1}): {}",
            check.name,
            seen.join(", "),
            check.cpu_us_per_msg,
            if pass { "ok" } else { "REGRESSION" }
        );
        ok &= pass;
    }
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_large_regression_fails_and_slow_machines_get_room() {
        assert!(verdict(50.0, 26.0, 2.0, 1.0).1);
        assert!(!verdict(53.0, 26.0, 2.0, 1.0).1);
        assert!(verdict(53.0, 26.0, 2.0, 1.5).1);
    }

    #[test]
    fn the_shipped_baseline_parses() -> Result<()> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("guard.json");
        let b: Baseline = serde_json::from_str(&std::fs::read_to_string(path)?)?;
        assert!(b.factor >= 1.5 && b.calibration_ms > 0.0 && !b.checks.is_empty());
        Ok(())
    }
}
