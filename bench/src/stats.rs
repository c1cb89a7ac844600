//! Latency summaries (nearest-rank percentiles) and plain-text tables.

use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub count: usize,
    pub min: Duration,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
    pub mean: Duration,
}

impl Summary {
    /// `None` for no samples.
    pub fn of(samples: &[Duration]) -> Option<Summary> {
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        let count = sorted.len();
        let min = *sorted.first()?;
        let max = *sorted.last()?;
        // Nearest rank: the smallest sample with at least p% of the samples at or below it.
        let rank = |p: f64| {
            let r = (p / 100.0 * count as f64).ceil() as usize;
            sorted[r.clamp(1, count) - 1]
        };
        let total: Duration = sorted.iter().sum();
        let mean = total / u32::try_from(count).unwrap_or(u32::MAX);
        Some(Summary { count, min, p50: rank(50.0), p90: rank(90.0), p99: rank(99.0), max, mean })
    }

    /// The columns of [`Summary::HEADER`], in milliseconds.
    pub fn cells(&self) -> Vec<String> {
        vec![
            self.count.to_string(),
            ms(self.min),
            ms(self.p50),
            ms(self.p90),
            ms(self.p99),
            ms(self.max),
            ms(self.mean),
        ]
    }

    pub const HEADER: [&'static str; 7] = ["n", "min ms", "p50 ms", "p90 ms", "p99 ms", "max ms", "mean ms"];
}

/// Milliseconds with three decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

/// Mebibytes with one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}

/// A text table: the first column left-aligned, the others right-aligned.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let columns = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: &[String]| {
        let mut out = String::new();
        for (i, w) in widths.iter().enumerate().take(columns) {
            let cell = cells.get(i).map(String::as_str).unwrap_or("");
            if i == 0 {
                out.push_str(&format!("{cell:<w$}"));
            } else {
                out.push_str(&format!("  {cell:>w$}"));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(&header.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    out.push_str(&line(&widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>()));
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let s = Summary::of(&samples).unwrap();
        assert_eq!((s.min, s.p50, s.p99, s.max), (samples[99], samples[50], samples[1], samples[0]));
        assert_eq!(s.mean, Duration::from_micros(50_500));
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn table_aligns_columns() {
        let t = table(&["what", "n"], &[vec!["a".into(), "100".into()], vec!["longer".into(), "1".into()]]);
        assert_eq!(t, "what      n\n------  ---\na       100\nlonger    1\n");
    }
}
