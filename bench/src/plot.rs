//! A small hand-written SVG chart writer for benchmark results (no dependencies).
//!
//! [`svg`] draws a title, a subtitle and a row of [`Panel`]s side by side. Each panel is a
//! horizontal bar chart of one metric across servers: label on the left, the bar scaled from 0
//! to the panel's largest value, the formatted value and unit at the bar's end. Values that
//! are 0, negative or not finite draw no bar; 0 and non-finite values print "n/a".
//! The output is a standalone SVG 1.1 document, fixed at 960 px wide, and deterministic.

use std::fmt::{self, Write as _};

/// One bar: a server's figure in one workload.
pub struct Bar {
    /// The server's name, printed left of the bar.
    pub label: String,
    /// The figure; 0 and non-finite values are drawn as an empty bar with "n/a".
    pub value: f64,
    /// Draw the bar in the accent colour (and its label in bold) rather than grey.
    pub highlight: bool,
}

/// One chart panel: a metric across servers.
pub struct Panel {
    /// The metric's name, e.g. "p99 latency".
    pub title: String,
    /// The unit printed after each value, e.g. "ms"; may be empty.
    pub unit: String,
    /// Whether the title line says "(higher is better)" or "(lower is better)".
    pub higher_is_better: bool,
    /// The bars, drawn top to bottom in this order.
    pub bars: Vec<Bar>,
}

const WIDTH: f64 = 960.0;
const MARGIN: f64 = 20.0;
const GAP: f64 = 32.0;
const TOP: f64 = 84.0;
const HEAD: f64 = 30.0;
const ROW: f64 = 28.0;
const BAR_H: f64 = 18.0;
/// Estimated advance of one character of 12 px text (generous, so text is not clipped).
const CHAR_W: f64 = 7.0;
const ACCENT: &str = "#2b6cd4";
const NEUTRAL: &str = "#a0a4aa";

/// An SVG document: `title` and `subtitle` on top, the panels side by side.
///
/// The height follows the panel with the most bars; any input (no panels, no bars, NaN,
/// markup in labels) gives a well-formed document.
pub fn svg(title: &str, subtitle: &str, panels: &[Panel]) -> String {
    render(title, subtitle, panels).unwrap_or_default()
}

fn render(title: &str, subtitle: &str, panels: &[Panel]) -> Result<String, fmt::Error> {
    let rows = panels.iter().map(|p| p.bars.len()).max().unwrap_or(0);
    let h = TOP + HEAD + rows.max(1) as f64 * ROW + 16.0;
    let mut o = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{WIDTH}" height="{h}" viewBox="0 0 {WIDTH} {h}">"#
    )?;
    writeln!(
        o,
        "<style type=\"text/css\">text{{font-family:Helvetica,Arial,sans-serif;font-size:12px;\
         fill:#222}}.title{{font-size:20px;font-weight:bold;fill:#111}}.sub{{font-size:13px;\
         fill:#555}}.head{{font-size:14px;font-weight:bold}}.label{{text-anchor:end}}\
         .hl{{font-weight:bold}}.na{{fill:#888}}rect.bar{{fill:{NEUTRAL}}}rect.hl{{fill:{ACCENT}}}\
         </style>\n<rect width=\"100%\" height=\"100%\" fill=\"#fff\"/>"
    )?;
    let inner = WIDTH - 2.0 * MARGIN;
    text(&mut o, MARGIN, 36.0, "title", &fit(title, inner, 12.0))?;
    text(&mut o, MARGIN, 60.0, "sub", &fit(subtitle, inner, CHAR_W))?;
    if panels.is_empty() {
        text(&mut o, MARGIN, TOP + 20.0, "na", "no data")?;
    }
    let n = panels.len().max(1) as f64;
    let pw = ((inner - GAP * (n - 1.0)) / n).max(0.0);
    for (i, p) in panels.iter().enumerate() {
        panel(&mut o, p, MARGIN + i as f64 * (pw + GAP), pw)?;
    }
    o.push_str("</svg>\n");
    Ok(o)
}

/// One panel at `x`, `w` pixels wide.
fn panel(o: &mut String, p: &Panel, x: f64, w: f64) -> fmt::Result {
    let better = ["lower", "higher"][usize::from(p.higher_is_better)];
    let head = format!("{} ({better} is better)", p.title);
    text(o, x, TOP + 14.0, "head", &fit(&head, w, 8.5))?;
    if p.bars.is_empty() {
        return text(o, x, TOP + HEAD + 14.0, "na", "no data");
    }
    let unit = &p.unit;
    let values: Vec<String> = p.bars.iter().map(|b| value_text(b.value, unit)).collect();
    let chars = |s: &String| s.chars().count() as f64 * CHAR_W;
    let label_w = p.bars.iter().map(|b| chars(&b.label)).fold(0.0, f64::max) + 10.0;
    let label_w = label_w.min(w * 0.5);
    let value_w = (values.iter().map(chars).fold(0.0, f64::max) + 8.0).min(w * 0.3);
    let area = (w - label_w - value_w).max(0.0);
    let ok = |v: f64| v.is_finite() && v > 0.0;
    let positive = p.bars.iter().map(|b| b.value).filter(|v| ok(*v));
    let max = positive.fold(0.0, f64::max);
    for (i, (b, v)) in p.bars.iter().zip(&values).enumerate() {
        let y = TOP + HEAD + i as f64 * ROW;
        let hl = if b.highlight { " hl" } else { "" };
        let base = y + BAR_H / 2.0 + 4.0;
        let label = fit(&b.label, label_w - 8.0, CHAR_W);
        text(o, x + label_w - 8.0, base, &format!("label{hl}"), &label)?;
        // ok(value) implies max >= value > 0.
        let len = area * if ok(b.value) { b.value / max } else { 0.0 };
        if len > 0.0 {
            writeln!(
                o,
                r#"<rect class="bar{hl}" x="{:.1}" y="{y:.1}" width="{len:.1}" height="{BAR_H}"/>"#,
                x + label_w
            )?;
        }
        let class = if v == "n/a" { "na" } else { "value" };
        let v = fit(v, value_w - 5.0, CHAR_W);
        text(o, x + label_w + len + 5.0, base, class, &v)?;
    }
    Ok(())
}

/// A `<text>` element at (`x`, `y`) of CSS class `class` with escaped content `s`.
fn text(o: &mut String, x: f64, y: f64, class: &str, s: &str) -> fmt::Result {
    let s = escape(s);
    writeln!(
        o,
        r#"<text x="{x:.1}" y="{y:.1}" class="{class}">{s}</text>"#
    )
}

/// `s` cut to about `px` pixels at `char_w` per character, ending in "…" when cut.
fn fit(s: &str, px: f64, char_w: f64) -> String {
    let max = (px / char_w).max(0.0) as usize; // floors; NaN gives 0
    if s.chars().count() <= max {
        return s.to_string();
    }
    let cut: String = s.chars().take(max.saturating_sub(1)).collect();
    if max > 0 { cut + "…" } else { cut }
}

/// XML-escapes `s`; characters XML 1.0 does not allow (most control characters) are dropped.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(' '),
            c if c.is_control() || c == '\u{FFFE}' || c == '\u{FFFF}' => {}
            c => out.push(c),
        }
    }
    out
}

/// The text at a bar's end: the number and unit, or "n/a" for 0 and non-finite values.
fn value_text(v: f64, unit: &str) -> String {
    if !v.is_finite() || v == 0.0 {
        return "n/a".to_string();
    }
    format!("{} {unit}", number(v)).trim_end().to_string()
}

/// 3 significant digits (below 0.001 in exponent form); from 100 up, whole with thousands
/// separators.
pub fn number(v: f64) -> String {
    let (sign, a) = (if v < 0.0 { "-" } else { "" }, v.abs());
    // `a` rounded to 3 significant digits (9.996 -> 10.0) picks the form.
    let r: f64 = format!("{a:.2e}").parse().unwrap_or(a);
    if r < 0.001 {
        return format!("{sign}{a:.2e}");
    }
    if r < 100.0 {
        let decimals = (2 - r.log10().floor() as i32).max(0) as usize;
        return format!("{sign}{r:.decimals$}");
    }
    let mut s = format!("{a:.0}");
    let mut i = s.len();
    while i > 3 {
        i -= 3;
        s.insert(i, ',');
    }
    format!("{sign}{s}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bar(label: &str, value: f64) -> Bar {
        let highlight = label.starts_with("wsrpc");
        Bar {
            label: label.into(),
            value,
            highlight,
        }
    }

    /// A "calls/s" panel of `bars`.
    fn pan(bars: Vec<Bar>) -> Panel {
        let (title, unit) = ("calls/s".to_string(), "calls/s".to_string());
        Panel {
            title,
            unit,
            higher_is_better: true,
            bars,
        }
    }

    fn one(bars: Vec<Bar>) -> String {
        svg("t", "s", &[pan(bars)])
    }

    /// The value of attribute `name` on each line that starts with `prefix`.
    fn attrs(doc: &str, prefix: &str, name: &str) -> Vec<f64> {
        let key = format!(" {name}=\"");
        let value = |l: &str| l.split(&key).nth(1)?.split('"').next()?.parse().ok();
        let lines = doc.lines().filter(|l| l.starts_with(prefix));
        lines.filter_map(value).collect()
    }

    fn well_formed(doc: &str) {
        let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";
        let head = format!("{xml}<svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\"");
        assert!(doc.starts_with(&head) && doc.ends_with("</svg>\n"), "{doc}");
        assert_eq!(doc.matches("<text").count(), doc.matches("</text>").count());
        assert!(!doc.contains("NaN") && !doc.contains("inf"), "{doc}");
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(escape(r#"a<b>&"c'"#), "a&lt;b&gt;&amp;&quot;c&apos;");
        assert_eq!(escape("x\u{0}y\tz"), "xy z");
        let doc = svg("<script>&", "\"q'", &[]);
        assert!(doc.contains(">&lt;script&gt;&amp;</text>"), "{doc}");
        assert!(doc.contains(">&quot;q&apos;</text>"), "{doc}");
        assert!(!doc.contains("<script>"));
        assert!(one(vec![bar("a<b", 1.0)]).contains(">a&lt;b</text>"));
    }

    #[test]
    fn formats_numbers() {
        let cases = "123456=123,456 1234567.8=1,234,568 999.6=1,000 100=100 99.96=100 \
                     12.3456=12.3 9.996=10.0 1.5=1.50 0.0123=0.0123 0.001=0.00100 1.2e-4=1.20e-4 -4321=-4,321";
        for (v, want) in cases.split(' ').filter_map(|c| c.split_once('=')) {
            assert_eq!(number(v.parse().unwrap_or(f64::NAN)), want, "{v}");
        }
        assert_eq!(value_text(2.5, "ms"), "2.50 ms");
        assert_eq!(value_text(42000.0, ""), "42,000");
    }

    #[test]
    fn bar_length_is_proportional() {
        let bars = vec![bar("wsrpc (json)", 200.0), bar("b", 50.0), bar("c", 100.0)];
        let doc = one(bars);
        let w = attrs(&doc, "<rect class=\"bar", "width");
        assert_eq!(w.len(), 3);
        assert!(w[0] > 100.0, "the largest bar is long: {w:?}");
        assert!((w[0] / w[1] - 4.0).abs() < 0.02, "{w:?}");
        assert!((w[0] / w[2] - 2.0).abs() < 0.02, "{w:?}");
        assert_eq!(doc.matches("<rect class=\"bar hl\"").count(), 1);
        assert!(doc.contains(">200 calls/s</text>") && doc.contains(">50.0 calls/s</text>"));
    }

    #[test]
    fn nan_zero_and_infinity_show_na() {
        let bars = [f64::NAN, 0.0, f64::INFINITY, 8.0].map(|v| bar("a", v));
        let doc = one(bars.into());
        well_formed(&doc);
        assert_eq!(doc.matches("class=\"na\">n/a</text>").count(), 3);
        assert_eq!(attrs(&doc, "<rect class=\"bar", "width").len(), 1);
        let all = one(vec![bar("a", f64::NAN), bar("b", 0.0)]);
        well_formed(&all);
        assert_eq!(all.matches(">n/a</text>").count(), 2);
        assert!(!all.contains("<rect class=\"bar"));
    }

    #[test]
    fn empty_input_is_a_valid_document() {
        let doc = svg("", "", &[]);
        well_formed(&doc);
        assert!(doc.contains(">no data</text>"));
        let empty = one(vec![]);
        well_formed(&empty);
        assert!(empty.contains(">calls/s (higher is better)</text>"));
        assert!(empty.contains(">no data</text>"));
        let many: Vec<Panel> = (0..40).map(|_| pan(vec![bar("a", 1.0)])).collect();
        well_formed(&svg("t", "s", &many));
    }

    #[test]
    fn height_follows_bars_long_text_is_cut_and_output_is_deterministic() {
        let a = one(vec![bar("a", 1.0)]);
        let b = one((0..6).map(|_| bar("a", 1.0)).collect());
        let (ha, hb) = (attrs(&a, "<svg", "height"), attrs(&b, "<svg", "height"));
        assert!(ha[0] > 100.0 && hb[0] - ha[0] == 5.0 * ROW, "{ha:?} {hb:?}");
        assert_eq!(a, one(vec![bar("a", 1.0)]));
        assert_eq!(
            (fit("abcdef", 28.0, 7.0), fit("abcd", 28.0, 7.0)),
            ("abc…".into(), "abcd".into())
        );
        let long = one(vec![bar(&"x".repeat(500), 1.0)]);
        assert!(long.contains(&format!(">{}…</text>", "x".repeat(63))));
    }
}
