//! The benchmark report, as Markdown for docs/benchmarks.md.

use crate::load::Measured;

/// Lines of the report and the targets met or missed.
#[derive(Default)]
pub struct Report {
    lines: Vec<String>,
    checks: Vec<(String, bool)>,
    table_open: bool,
}

impl Report {
    /// Keeps `text` for the report and shows it on stderr at once, so a
    /// long run (`all`) that is stopped part-way still shows what it
    /// measured.
    fn push(&mut self, text: String) {
        eprintln!("{text}");
        self.lines.push(text);
    }

    /// A line of text.
    pub fn line(&mut self, text: String) {
        if self.table_open && !text.starts_with('|') {
            self.push(String::new());
            self.table_open = false;
        }
        self.push(text);
    }

    /// A measured row, with its ratio to `limit`.
    pub fn row(&mut self, name: &str, m: &Measured, limit: Option<&Measured>) {
        if !self.table_open {
            self.push(String::new());
            self.push("| measured | calls/s | ratio to limit | p50 ms | p99 ms | failed |".into());
            self.push("|---|---:|---:|---:|---:|---:|".into());
            self.table_open = true;
        }
        let ratio = limit.map_or("1.00".to_owned(), |l| {
            format!("{:.2}", m.per_second() / l.per_second())
        });
        self.push(format!(
            "| {name} | {:.0} | {ratio} | {:.2} | {:.2} | {} |",
            m.per_second(),
            m.quantile_ms(0.5),
            m.quantile_ms(0.99),
            m.failed
        ));
    }

    /// A target and whether it was met.
    pub fn check(&mut self, target: &str, met: bool) {
        eprintln!("{target}: {}", if met { "met" } else { "NOT met" });
        self.checks.push((target.to_owned(), met));
    }

    /// The whole report.
    pub fn render(&self) -> String {
        let mut out = self.lines.join("\n");
        out.push_str("\n\n| target | met |\n|---|---|\n");
        for (t, met) in &self.checks {
            out.push_str(&format!(
                "| {t} | {} |\n",
                if *met { "yes" } else { "**no**" }
            ));
        }
        out
    }
}
