//! The statistics: each configuration's runs on one workload gathered into a row, their
//! medians and extremes, and whether they are steady enough to judge a target.
use super::{
    configs::Config,
    matrix::{Matrix, Sample},
};

/// Medians and extremes of one configuration on one workload.
pub struct Row {
    pub config: Config,
    pub ns: Vec<f64>,
    pub ratio: Vec<f64>,
    loop_minflt: Vec<f64>,
    pub expected: Vec<f64>,
    pub delivered: Vec<f64>,
    /// expected - delivered, per run
    pub missing: Vec<f64>,
    pub lost: Vec<f64>,
    pub cpu_tracing_ms: Vec<f64>,
    pub cpu_total_ms: Vec<f64>,
    pub rss_mib: Vec<f64>,
    pub attach_ms: Vec<f64>,
    pub wakeups_per_1k: Vec<f64>,
    pub ipis_per_fault: Vec<f64>,
    pub others_percent: Vec<f64>,
}

impl Matrix {
    fn samples_of(&self, variant: usize, config: Config) -> impl Iterator<Item = &Sample> {
        self.samples
            .iter()
            .filter(move |s| s.variant == variant && s.config == config)
    }

    fn untraced_ns(&self, variant: usize, round: usize) -> Option<f64> {
        self.samples_of(variant, Config::Untraced)
            .find(|s| s.round == round)
            .map(|s| s.outcome.ns_per_fault)
    }

    pub fn row(&self, variant: usize, config: Config) -> Row {
        let mut row = Row {
            config,
            ns: vec![],
            ratio: vec![],
            loop_minflt: vec![],
            expected: vec![],
            delivered: vec![],
            missing: vec![],
            lost: vec![],
            cpu_tracing_ms: vec![],
            cpu_total_ms: vec![],
            rss_mib: vec![],
            attach_ms: vec![],
            wakeups_per_1k: vec![],
            ipis_per_fault: vec![],
            others_percent: vec![],
        };
        for sample in self.samples_of(variant, config) {
            let o = &sample.outcome;
            row.ns.push(o.ns_per_fault);
            // Against the untraced run of the same round: robust to drift between rounds.
            if let Some(base) = self.untraced_ns(variant, sample.round) {
                row.ratio.push(o.ns_per_fault / base);
            }
            row.loop_minflt.push(o.loop_minflt as f64);
            row.expected.push(o.expected as f64);
            row.ipis_per_fault
                .push(o.ipis as f64 / o.expected.max(1) as f64);
            row.others_percent.push(sample.others * 100.0);
            let Some(t) = &sample.tracer else { continue };
            if let Some(d) = t.delivered {
                row.delivered.push(d as f64);
                row.missing.push(o.expected as f64 - d as f64);
            }
            if let Some(lost) = t.lost {
                row.lost.push(lost as f64);
            }
            row.cpu_tracing_ms.push(t.cpu_tracing.as_secs_f64() * 1e3);
            row.cpu_total_ms.push(t.cpu_total.as_secs_f64() * 1e3);
            row.rss_mib.push(t.peak_rss_kib as f64 / 1024.0);
            row.attach_ms.push(t.attach.as_secs_f64() * 1e3);
            row.wakeups_per_1k
                .push(t.wakeups as f64 * 1000.0 / o.expected.max(1) as f64);
        }
        row
    }
}

pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

pub fn max(values: &[f64]) -> Option<f64> {
    values.iter().copied().reduce(f64::max)
}

pub fn min(values: &[f64]) -> Option<f64> {
    values.iter().copied().reduce(f64::min)
}

/// The largest median absolute deviation, relative to the median, of runs that still judge a
/// speed target: robust to one outlier in five, not to a cell whose runs are bimodal.
pub const NOISY: f64 = 0.10;

/// The runs are steady enough to judge a target on their median.
pub fn steady(values: &[f64]) -> bool {
    let Some(middle) = median(values) else {
        return false;
    };
    let deviations: Vec<f64> = values.iter().map(|v| (v - middle).abs()).collect();
    median(&deviations).is_some_and(|mad| mad <= NOISY * middle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn steadiness() {
        // One outlier in five is steady; a bimodal cell is not.
        assert!(steady(&[1731.0, 1769.0, 1771.0, 1839.0, 2771.0]));
        assert!(!steady(&[1.7, 1.8, 3.4, 3.5, 5.2]));
        assert!(!steady(&[]));
    }
}
