//! The benchmark's table: one row per workload, absolute figures for each place it ran
//! (native directory, single node, the pair's primary and replica) and each one's ratio to
//! native; printed aligned for the terminal, or as Markdown for docs/BENCHMARKS.md.

use std::fmt::Write as _;
use std::io::Write as _;

/// Where a figure was measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    /// A plain directory on the same disk.
    Native = 0,
    /// A single-node replite mount.
    Single = 1,
    /// The primary of a primary + replica pair.
    Primary = 2,
    /// The replica of that pair.
    Replica = 3,
}

impl Column {
    /// Its name in progress lines.
    pub fn label(self) -> &'static str {
        match self {
            Column::Native => "native",
            Column::Single => "single node",
            Column::Primary => "pair primary",
            Column::Replica => "pair replica",
        }
    }
}

/// One workload's figures.
#[derive(Debug, Clone)]
pub struct Row {
    /// What was measured.
    pub workload: String,
    /// Unit of every figure in the row.
    pub unit: &'static str,
    /// Figures by [`Column`]; `None` where the workload does not run.
    pub values: [Option<f64>; 4],
    /// The target, as text (`≥ 0.70`, `≤ 1 ms`), or empty.
    pub target: &'static str,
}

impl Row {
    /// A row with no figures yet.
    pub fn new(workload: impl Into<String>, unit: &'static str, target: &'static str) -> Row {
        Row { workload: workload.into(), unit, values: [None; 4], target }
    }

    /// Sets the figure of `column`.
    pub fn set(&mut self, column: Column, value: f64) {
        self.values[column as usize] = Some(value);
    }

    fn ratio(&self, column: Column) -> Option<f64> {
        let native = self.values[Column::Native as usize]?;
        let value = self.values[column as usize]?;
        (native > 0.0).then(|| value / native)
    }

    /// The cells after the workload and unit, in table order.
    fn cells(&self) -> Vec<String> {
        let mut cells = vec![figure(self.values[Column::Native as usize])];
        for column in [Column::Single, Column::Primary, Column::Replica] {
            cells.push(figure(self.values[column as usize]));
            cells.push(self.ratio(column).map_or_else(|| "-".to_owned(), |r| small(r, 2)));
        }
        cells.push(if self.target.is_empty() { "-".to_owned() } else { self.target.to_owned() });
        cells
    }
}

/// Three significant-ish digits: enough for figures that vary run to run by more than that.
fn figure(value: Option<f64>) -> String {
    match value {
        None => "-".to_owned(),
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) if v >= 10.0 => format!("{v:.1}"),
        Some(v) if v >= 1.0 => format!("{v:.2}"),
        Some(v) => small(v, 3),
    }
}

/// `v` with `decimals` decimals, or below 0.1 with two significant digits (so a tiny figure never
/// prints as zero).
fn small(v: f64, decimals: usize) -> String {
    if v >= 0.1 || v <= 0.0 {
        return format!("{v:.decimals$}");
    }
    let leading_zeros = (-v.log10()).floor() as usize;
    format!("{v:.prec$}", prec = (leading_zeros + 2).min(12))
}

const HEADINGS: [&str; 10] =
    ["WORKLOAD", "UNIT", "NATIVE", "SINGLE", "RATIO", "PRIMARY", "RATIO", "REPLICA", "RATIO", "TARGET"];
const MARKDOWN_HEADINGS: [&str; 10] = [
    "workload",
    "unit",
    "native",
    "single node",
    "ratio",
    "pair: primary",
    "ratio",
    "pair: replica",
    "ratio",
    "target",
];

/// The whole run: lines describing it, then the rows.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Lines about the run (command, machine, sizes), printed above the table.
    pub notes: Vec<String>,
    /// The figures.
    pub rows: Vec<Row>,
}

impl Report {
    /// The table aligned with spaces (ratios are to native; `-` where a workload does not run).
    pub fn text(&self) -> String {
        let mut tw = tabwriter::TabWriter::new(Vec::new()).padding(2);
        for note in &self.notes {
            let _ = writeln!(tw, "{note}");
        }
        let _ = writeln!(tw);
        let _ = writeln!(tw, "{}", HEADINGS.join("\t"));
        for row in &self.rows {
            let _ = writeln!(tw, "{}\t{}\t{}", row.workload, row.unit, row.cells().join("\t"));
        }
        let bytes = tw.into_inner().unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The notes as a list and the table in Markdown.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        for note in &self.notes {
            let _ = writeln!(out, "- {note}");
        }
        let _ = writeln!(out);
        let _ = writeln!(out, "| {} |", MARKDOWN_HEADINGS.join(" | "));
        let align: Vec<&str> =
            MARKDOWN_HEADINGS.iter().enumerate().map(|(i, _)| if i < 2 { "---" } else { "---:" }).collect();
        let _ = writeln!(out, "|{}|", align.join("|"));
        for row in &self.rows {
            let _ = writeln!(out, "| {} | {} | {} |", row.workload, row.unit, row.cells().join(" | "));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        let mut write = Row::new("write tx, WAL/FULL", "tx/s", "≥ 0.60");
        write.set(Column::Native, 5224.0);
        write.set(Column::Single, 3731.0);
        write.set(Column::Primary, 3000.0);
        let mut lag = Row::new("lag p50, DELETE/FULL", "ms", "≤ 0.3");
        lag.set(Column::Replica, 0.4567);
        Report { notes: vec!["replite bench --quick".into()], rows: vec![write, lag] }
    }

    #[test]
    fn tiny_figures_keep_two_significant_digits() {
        assert_eq!(small(0.0054, 2), "0.0054");
        assert_eq!(small(0.054, 2), "0.054");
        assert_eq!(small(0.54, 2), "0.54");
        assert_eq!(small(0.4567, 3), "0.457");
        assert_eq!(figure(Some(0.000_31)), "0.00031");
        assert_eq!(figure(Some(1234.4)), "1234");
    }

    #[test]
    fn report_renders_as_aligned_text_and_markdown() {
        let report = sample();
        insta::assert_snapshot!("report_text", report.text());
        insta::assert_snapshot!("report_markdown", report.markdown());
    }
}
