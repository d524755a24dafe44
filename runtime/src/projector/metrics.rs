//! What accumulates per projector while its runners work: time in the module's `apply`, time
//! committing, batches, faults and dead letters (prometheus-client families, labelled by
//! projector; `GET /metrics` registers them).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

/// The label every projector metric carries.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProjectorLabels {
    pub projector: String,
}

type Histograms = Family<ProjectorLabels, Histogram, fn() -> Histogram>;

fn seconds_histogram() -> Histogram {
    // 10 µs .. ~0.3 s.
    Histogram::new(exponential_buckets(0.000_01, 2.0, 16))
}

/// Every projector's accumulated figures. Cheap to clone (shared families).
#[derive(Clone)]
pub struct ProjectorMetrics {
    pub apply_seconds: Histograms,
    pub commit_seconds: Histograms,
    pub batches: Family<ProjectorLabels, Counter>,
    pub faults: Family<ProjectorLabels, Counter>,
    pub dead_letters: Family<ProjectorLabels, Counter>,
}

impl Default for ProjectorMetrics {
    fn default() -> Self {
        ProjectorMetrics {
            apply_seconds: Family::new_with_constructor(seconds_histogram),
            commit_seconds: Family::new_with_constructor(seconds_histogram),
            batches: Family::default(),
            faults: Family::default(),
            dead_letters: Family::default(),
        }
    }
}

impl ProjectorMetrics {
    /// The handles a runner of `projector` records into.
    pub fn runner(&self, projector: &str) -> RunnerMetrics {
        let labels = ProjectorLabels {
            projector: projector.to_string(),
        };
        RunnerMetrics {
            apply_seconds: self.apply_seconds.get_or_create(&labels).clone(),
            commit_seconds: self.commit_seconds.get_or_create(&labels).clone(),
            batches: self.batches.get_or_create(&labels).clone(),
            faults: self.faults.get_or_create(&labels).clone(),
            dead_letters: self.dead_letters.get_or_create(&labels).clone(),
        }
    }

    /// Forgets a deleted projector.
    pub fn remove(&self, projector: &str) {
        let labels = ProjectorLabels {
            projector: projector.to_string(),
        };
        self.apply_seconds.remove(&labels);
        self.commit_seconds.remove(&labels);
        self.batches.remove(&labels);
        self.faults.remove(&labels);
        self.dead_letters.remove(&labels);
    }
}

/// One projector's handles into [`ProjectorMetrics`] (a runner records without locking a map).
#[derive(Clone)]
pub struct RunnerMetrics {
    pub apply_seconds: Histogram,
    pub commit_seconds: Histogram,
    pub batches: Counter,
    pub faults: Counter,
    pub dead_letters: Counter,
}

impl Default for RunnerMetrics {
    /// Handles recorded nowhere (verification and benchmark runs).
    fn default() -> Self {
        RunnerMetrics {
            apply_seconds: seconds_histogram(),
            commit_seconds: seconds_histogram(),
            batches: Counter::default(),
            faults: Counter::default(),
            dead_letters: Counter::default(),
        }
    }
}
