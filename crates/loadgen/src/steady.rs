//! Steady state: every throughput measurement counts what it has done while it runs, and its
//! rate is the one over the middle of the run, not over the run with its start-up and tail.
//!
//! - [`sampled`] runs a measurement while it samples a count of finished items every 50 ms,
//!   into a [`Timeline`];
//! - [`Timeline::steady`] is the rate between the moments the count passed 10 % and 90 % of
//!   its final value: the [`Steady`] window, with the connections, caches and the broker's JIT
//!   warm before it and the last batches draining after it;
//! - [`sized`] picks a measurement's size from a quick probe, so that its steady window lasts
//!   the seconds asked for on whatever machine runs it.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

/// How often [`sampled`] reads the count.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// The steady window runs from this share of the final count...
const WINDOW_FROM: f64 = 0.1;
/// ...to this one.
const WINDOW_TO: f64 = 0.9;
/// The first probe's size; each next one is four times larger...
const PROBE_FIRST: u64 = 1_000;
/// ...until one lasts this long...
const PROBE_SECONDS: f64 = 2.0;
/// ...or is this large.
const PROBE_MOST: u64 = 1_024_000;
/// A measurement runs faster than its probe as a rule (the probes warmed it up): sized for
/// a quarter more than the probe's rate gets through, its window lasts at least the seconds
/// asked for unless it runs more than 25 % faster.
const MARGIN: f64 = 1.25;

/// The count of finished items at moments of a run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timeline {
    /// (seconds since the run's start, items finished by then), in time order.
    samples: Vec<(f64, u64)>,
}

/// The rate over the middle of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Steady {
    /// When the count passed 10 % of its final value, in seconds since the start.
    pub from_seconds: f64,
    /// When it passed 90 %.
    pub to_seconds: f64,
    /// Items finished between the two.
    pub items: u64,
    /// `items` over the window's length.
    pub per_second: f64,
}

impl Timeline {
    /// A timeline of the given samples (seconds since the start, items finished by then).
    pub fn new(samples: Vec<(f64, u64)>) -> Self {
        Self { samples }
    }

    /// The rate between the first samples at or above 10 % and 90 % of the last count; `None`
    /// when those are the same sample (a run too short for its sampling).
    pub fn steady(&self) -> Option<Steady> {
        let &(_, total) = self.samples.last()?;
        let passed = |share: f64| {
            let mark = (total as f64 * share).ceil() as u64;
            self.samples.iter().find(|&&(_, count)| count >= mark)
        };
        let (&(from, first), &(to, last)) = (passed(WINDOW_FROM)?, passed(WINDOW_TO)?);
        (to > from).then(|| Steady {
            from_seconds: from,
            to_seconds: to,
            items: last - first,
            per_second: (last - first) as f64 / (to - from),
        })
    }
}

/// Runs `work` while reading `count` (items finished so far) every 50 ms and once more when
/// it is done; the timeline's clock starts now. The reading runs as a task of its own: a
/// measurement's future may go a long time without yielding while its items complete.
pub async fn sampled<T>(
    count: impl Fn() -> u64 + Send + Sync + 'static,
    work: impl Future<Output = T>,
) -> (T, Timeline) {
    let started = Instant::now();
    let count = Arc::new(count);
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let sampler = tokio::spawn({
        let count = count.clone();
        async move {
            let mut samples = Vec::new();
            let mut every = tokio::time::interval(SAMPLE_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = &mut stopped => return samples,
                    _ = every.tick() => samples.push((started.elapsed().as_secs_f64(), count())),
                }
            }
        }
    });
    let output = work.await;
    let _ = stop.send(());
    let mut samples = sampler.await.unwrap_or_default();
    samples.push((started.elapsed().as_secs_f64(), count()));
    (output, Timeline::new(samples))
}

/// How fast a measurement went, in the items it counts (acknowledged messages, accepted
/// e-mails, orders counted...): every report carries one, flattened into its JSON as
/// `seconds`, `per_second` and `steady`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rate {
    /// How long the measured run lasted; each report says from when to when.
    pub seconds: f64,
    /// Items per second over `seconds`; 0 when the run did not finish.
    pub per_second: f64,
    /// The rate over the middle of the run, if it lasted long enough to have one.
    pub steady: Option<Steady>,
}

impl Rate {
    /// `items` done in `seconds` (0 items for a run that did not finish), with the steady
    /// window of `timeline`.
    pub fn of(items: u64, seconds: f64, timeline: &Timeline) -> Self {
        Self {
            seconds,
            per_second: items as f64 / seconds.max(f64::EPSILON),
            steady: timeline.steady(),
        }
    }

    /// The steady rate, or the whole run's for a run without a steady window.
    pub fn steady_or_whole(&self) -> f64 {
        self.steady
            .as_ref()
            .map_or(self.per_second, |s| s.per_second)
    }

    /// "steady 1,234/s from 3.1 s to 33.4 s", for a summary.
    pub fn describe_steady(&self) -> String {
        self.steady.as_ref().map_or_else(
            || "no steady window".to_owned(),
            |s| {
                format!(
                    "steady {:.0}/s from {:.1} s to {:.1} s",
                    s.per_second, s.from_seconds, s.to_seconds
                )
            },
        )
    }
}

/// What every measurement reports.
pub trait Measurement {
    /// How fast it went.
    fn rate(&self) -> &Rate;
    /// One or two lines for a human.
    fn summary(&self) -> String;
}

/// How a measurement is sized.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct Sizing {
    /// Size the run from a probe so that its steady window (10 % to 90 % of the items done)
    /// lasts about this many seconds; the size given otherwise is then ignored.
    #[arg(long)]
    pub steady_seconds: Option<u64>,
}

/// What [`sized`] ran before the measurement.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Probe {
    /// Items of every probe run together.
    pub items: u64,
    /// The last probe run's rate, which sized the measurement.
    pub per_second: f64,
    /// The measurement's size.
    pub sized: u64,
}

/// A measurement and the probe that sized it.
#[derive(Debug, Serialize)]
pub struct Sized<R> {
    #[serde(flatten)]
    pub report: R,
    pub probe: Option<Probe>,
}

/// Runs `measure(items)` once with `items`, or, with [`Sizing::steady_seconds`], first as a
/// probe (1,000 items, four times more each run until one lasts 2 s) and then with as many
/// items as the probe's rate gets through in the steady window plus the 20 % around it, and
/// a quarter more. The probe's rate is its steady one where it had a steady window: its
/// start-up says little about the measurement's pace.
pub async fn sized<R, F>(
    sizing: Sizing,
    items: u64,
    mut measure: impl FnMut(u64) -> F,
) -> anyhow::Result<Sized<R>>
where
    R: Measurement,
    F: Future<Output = anyhow::Result<R>>,
{
    let Some(seconds) = sizing.steady_seconds else {
        return Ok(Sized {
            report: measure(items).await?,
            probe: None,
        });
    };
    let (mut size, mut probed) = (PROBE_FIRST, 0);
    let per_second = loop {
        let probe = measure(size).await?;
        eprint!("probe: {}", probe.summary());
        let per_second = probe.rate().per_second;
        probed += size;
        anyhow::ensure!(
            per_second > 0.0,
            "a probe of {size} items did not finish; see its summary above"
        );
        if size as f64 / per_second >= PROBE_SECONDS || size >= PROBE_MOST {
            break probe.rate().steady_or_whole();
        }
        size *= 4;
    };
    let sized = size_for(per_second, seconds);
    Ok(Sized {
        report: measure(sized).await?,
        probe: Some(Probe {
            items: probed,
            per_second,
            sized,
        }),
    })
}

/// Items for a steady window of `seconds` at `per_second` with the margin, rounded up to a
/// thousand.
fn size_for(per_second: f64, seconds: u64) -> u64 {
    let items = per_second * seconds as f64 * MARGIN / (WINDOW_TO - WINDOW_FROM);
    (items / 1000.0).ceil().max(1.0) as u64 * 1000
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    #[test]
    fn the_steady_rate_leaves_out_a_slow_start_and_a_slow_tail() {
        // 100 items in the first 10 s, 800 in the next 8 s, the last 100 in 10 s: the whole
        // run's rate is 1000 / 28 s, the steady one 100/s.
        let mut samples = vec![(0.0, 0)];
        samples.extend((1..=10u32).map(|s| (f64::from(s), 10 * u64::from(s))));
        samples.extend((1..=8u32).map(|s| (10.0 + f64::from(s), 100 + 100 * u64::from(s))));
        samples.extend((1..=10u32).map(|s| (18.0 + f64::from(s), 900 + 10 * u64::from(s))));
        let steady = Timeline::new(samples).steady().unwrap();
        assert_eq!(
            steady,
            Steady {
                from_seconds: 10.0,
                to_seconds: 18.0,
                items: 800,
                per_second: 100.0
            }
        );
    }

    #[test]
    fn a_run_done_within_one_sample_has_no_steady_window() {
        assert_eq!(Timeline::new(vec![(0.0, 0), (0.01, 500)]).steady(), None);
        assert_eq!(Timeline::new(Vec::new()).steady(), None);
    }

    #[tokio::test]
    async fn sampling_follows_the_count_until_the_work_is_done() {
        let done = Arc::new(AtomicU64::new(0));
        let counted = done.clone();
        let ((), timeline) = sampled(move || counted.load(Ordering::Relaxed), async {
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_millis(30)).await;
                done.fetch_add(10, Ordering::Relaxed);
            }
        })
        .await;
        assert_eq!(timeline.samples.first().unwrap().1, 0);
        assert_eq!(timeline.samples.last().unwrap().1, 100);
        assert!(timeline.samples.len() >= 5, "{timeline:?}");
        assert!(timeline.samples.windows(2).all(|w| w[0] <= w[1]));
    }

    /// A run of `.0` items at the rate `.1`.
    struct Fixed(u64, Rate);
    impl Fixed {
        /// `items` at `per_second`, with the steady window `steady`.
        fn new(items: u64, per_second: f64, steady: Option<Steady>) -> Self {
            let seconds = items as f64 / per_second;
            Self(
                items,
                Rate {
                    seconds,
                    per_second,
                    steady,
                },
            )
        }
    }
    impl Measurement for Fixed {
        fn rate(&self) -> &Rate {
            &self.1
        }

        fn summary(&self) -> String {
            format!("{} items\n", self.0)
        }
    }

    /// Sizes a run for 30 s of steady window, each run being `run(items)`: the sizes run,
    /// and what came of it.
    async fn sized_for_30_s(run: impl Fn(u64) -> Fixed) -> (Vec<u64>, Sized<Fixed>) {
        let mut runs = Vec::new();
        let thirty = Sizing {
            steady_seconds: Some(30),
        };
        let sized = sized(thirty, 7, |items| {
            runs.push(items);
            let report = run(items);
            async move { Ok(report) }
        })
        .await
        .unwrap();
        (runs, sized)
    }

    #[tokio::test]
    async fn a_probe_grows_until_it_lasts_two_seconds_and_sizes_the_run() {
        let (runs, sized) = sized_for_30_s(|items| Fixed::new(items, 5_000.0, None)).await;
        // 1,000 and 4,000 items at 5,000/s last under 2 s; 16,000 last 3.2 s; 30 s of steady
        // window at 5,000/s is 150,000 items, the whole run 187,500, with the margin 234,375.
        assert_eq!(runs, [1_000, 4_000, 16_000, 235_000]);
        assert_eq!(sized.report.0, 235_000);
        assert_eq!(
            sized.probe,
            Some(Probe {
                items: 21_000,
                per_second: 5_000.0,
                sized: 235_000
            })
        );
    }

    #[tokio::test]
    async fn without_steady_seconds_the_given_size_runs_once() {
        let no_steady = Sizing {
            steady_seconds: None,
        };
        let sized = sized(no_steady, 7, |items| async move {
            Ok(Fixed::new(items, 1.0, None))
        })
        .await
        .unwrap();
        assert_eq!(sized.report.0, 7);
        assert_eq!(sized.probe, None);
    }

    #[tokio::test]
    async fn a_probe_that_does_not_finish_is_an_error() {
        let err = sized(
            Sizing {
                steady_seconds: Some(30),
            },
            7,
            |items| async move { Ok(Fixed::new(items, 0.0, None)) },
        )
        .await
        .err()
        .unwrap();
        assert!(err.to_string().contains("did not finish"), "{err}");
    }

    #[tokio::test]
    async fn the_run_is_sized_from_the_probes_steady_rate_not_its_start_up() {
        let steady = Steady {
            from_seconds: 1.0,
            to_seconds: 3.0,
            items: 8_000,
            per_second: 4_000.0,
        };
        // A slow start: 2,500/s over the whole run, 4,000/s over its middle.
        let (runs, sized) =
            sized_for_30_s(|items| Fixed::new(items, 2_500.0, Some(steady.clone()))).await;
        // 1,000 and 4,000 items at 2,500/s last under 2 s, 16,000 6.4 s; 30 s of steady window
        // at the steady 4,000/s (not the 2,500/s of the whole probe) with the 20 % around it
        // and the margin: 187,500.
        assert_eq!(runs, [1_000, 4_000, 16_000, 188_000]);
        assert_eq!(sized.probe.unwrap().per_second, 4_000.0);
    }
}
