//! The report as one self-contained HTML page, the way Exchange's admin center shows its SMTP
//! AUTH clients report: four charts first — volume per day by sending domain, messages by
//! sender, messages by domain, senders by TLS protocol — then the table, sortable by any
//! column. Charts are inline SVG written here; the only script is the table's sorter, inline.
//! Nothing is fetched: a Content-Security-Policy forbids every network load, so the file opens
//! in a browser from disk with no server.
//!
//! Every chart is a `<figure class="chart" data-bars="N">` whose marks are `rect.bar` (one per
//! bar or stacked segment; the volume chart groups its days in `g.day`): what the browser test
//! counts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write;

use super::range::rfc3339;
use super::table::cells;
use super::tally::{day_of, Report};
use crate::text;

/// Bars in the sender and domain charts (the rest is summed in one "others" bar).
const TOP: usize = 15;
/// Domains told apart in the volume chart (the rest is one "others" colour).
const VOLUME_DOMAINS: usize = 8;
/// Most days the volume chart draws: the last ones of the range.
const MAX_DAYS: i64 = 366;
/// Longest label drawn in a chart (the table has the whole value).
const LABEL_CHARS: usize = 40;
/// Colours of the domains in the volume chart and of the TLS bars (colour-blind safe set);
/// the last one is "others".
const PALETTE: [&str; 9] = [
    "#4269d0", "#efb118", "#ff725c", "#6cc5b0", "#3ca951", "#ff8ab7", "#a463f2", "#97bbf5",
    "#9c9c9c",
];

/// HTML-escapes `s` after writing its control characters as escapes (a login from the audit
/// log may hold any of them).
fn esc(s: &str) -> String {
    let s = text::escape(s);
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A chart label: escaped and cut.
fn label(s: &str) -> String {
    esc(&text::cell(s, LABEL_CHARS))
}

/// `2026-11-27` for a day number.
fn date(day: i64) -> String {
    chrono::DateTime::from_timestamp(day.saturating_mul(86_400), 0)
        .map_or_else(|| day.to_string(), |t| t.date_naive().to_string())
}

/// The days the volume chart covers: the range asked for (`--since`/`--until`), else the
/// first to the last event; at most [`MAX_DAYS`], the last ones.
fn days(report: &Report) -> Option<(i64, i64)> {
    let first = report.range.since.or(report.first_event).map(day_of)?;
    let last = match report.range.until {
        // Exclusive end: the day of its last instant.
        Some(u) => day_of(
            u.checked_sub(std::time::Duration::from_nanos(1))
                .unwrap_or(u),
        ),
        None => report.last_event.map(day_of)?,
    };
    let last = last.max(first);
    Some((first.max(last - (MAX_DAYS - 1)), last))
}

/// A horizontal bar chart: one `rect.bar` per (label, value).
fn bar_chart(out: &mut String, id: &str, title: &str, unit: &str, bars: &[(String, u64, &str)]) {
    let row = 24;
    let left = 210;
    let width = 580;
    let plot = width - left - 60;
    let height = 30 + row * bars.len().max(1);
    let max = bars.iter().map(|b| b.1).max().unwrap_or(0).max(1);
    let _ = write!(
        out,
        "<figure class=\"chart\" id=\"{id}\" data-bars=\"{}\"><figcaption>{}</figcaption>\
         <svg role=\"img\" aria-label=\"{}\" viewBox=\"0 0 {width} {height}\" width=\"{width}\" \
         height=\"{height}\">",
        bars.len(),
        esc(title),
        esc(title)
    );
    if bars.is_empty() {
        let _ = write!(
            out,
            "<text x=\"10\" y=\"30\" class=\"empty\">No messages in this period</text>"
        );
    }
    for (i, (name, value, colour)) in bars.iter().enumerate() {
        let y = 10 + row * i;
        let w = (*value as f64 / max as f64 * plot as f64).round().max(1.0);
        let _ = write!(
            out,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\" class=\"label\">{}</text>\
             <rect class=\"bar\" x=\"{left}\" y=\"{y}\" width=\"{w}\" height=\"{}\" \
             fill=\"{colour}\" data-label=\"{}\" data-value=\"{value}\"><title>{}: {value} {unit}</title></rect>\
             <text x=\"{}\" y=\"{}\" class=\"value\">{value}</text>",
            left - 8,
            y + 15,
            label(name),
            row - 6,
            esc(name),
            esc(name),
            left as f64 + w + 6.0,
            y + 15,
        );
    }
    out.push_str("</svg></figure>\n");
}

/// The volume chart: one stacked bar per day, a segment per sending domain.
fn volume_chart(out: &mut String, report: &Report) {
    let Some((first, last)) = days(report) else {
        bar_chart(out, "volume", "Volume per day by sending domain", "", &[]);
        return;
    };
    // The busiest domains get their own colour, the others share one.
    let mut by_domain: BTreeMap<&str, u64> = BTreeMap::new();
    for domains in report.daily.range(first..=last).map(|(_, d)| d) {
        for (d, n) in domains {
            *by_domain.entry(d.as_str()).or_default() += n;
        }
    }
    let mut ranked: Vec<(&str, u64)> = by_domain.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    let named: Vec<&str> = ranked.iter().take(VOLUME_DOMAINS).map(|d| d.0).collect();
    let others = ranked.len() > named.len();
    let n_days = usize::try_from(last - first + 1).unwrap_or(1);
    let (left, top, plot_h) = (50usize, 10usize, 220usize);
    let slot = (720 / n_days).clamp(3, 64);
    let width = (left + slot * n_days + 20).max(560);
    let legend_columns = ((width - left) / 170).max(1);
    let legend_rows = (named.len() + usize::from(others)).div_ceil(legend_columns);
    let height = top + plot_h + 40 + 20 * legend_rows;
    let totals: Vec<u64> = (first..=last)
        .map(|d| {
            report
                .daily
                .get(&d)
                .map_or(0, |v| v.iter().map(|x| x.1).sum())
        })
        .collect();
    let max = totals.iter().copied().max().unwrap_or(0).max(1);
    let _ = write!(
        out,
        "<figure class=\"chart\" id=\"volume\" data-bars=\"{n_days}\"><figcaption>Volume per day \
         by sending domain</figcaption><svg role=\"img\" aria-label=\"Volume per day by sending \
         domain\" viewBox=\"0 0 {width} {height}\" width=\"{width}\" height=\"{height}\">\
         <line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" class=\"axis\"/>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"end\" class=\"label\">{max}</text>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"end\" class=\"label\">0</text>",
        top + plot_h,
        width - 10,
        top + plot_h,
        left - 6,
        top + 10,
        left - 6,
        top + plot_h,
    );
    let label_every = n_days.div_ceil(12).max(1);
    for (i, day) in (first..=last).enumerate() {
        let x = left + slot * i + 1;
        let _ = write!(out, "<g class=\"day\" data-day=\"{}\">", date(day));
        let mut y = (top + plot_h) as f64;
        let mut segments: Vec<(String, u64, &str)> = Vec::new();
        let mut other = 0;
        for (d, n) in report.daily.get(&day).into_iter().flatten() {
            match named.iter().position(|x| *x == d) {
                Some(k) => segments.push((d.clone(), *n, PALETTE[k])),
                None => other += n,
            }
        }
        if other > 0 {
            segments.push(("others".into(), other, PALETTE[PALETTE.len() - 1]));
        }
        for (name, n, colour) in &segments {
            let h = *n as f64 / max as f64 * plot_h as f64;
            y -= h;
            let _ = write!(
                out,
                "<rect class=\"bar\" x=\"{x}\" y=\"{y:.1}\" width=\"{}\" height=\"{h:.1}\" \
                 fill=\"{colour}\" data-label=\"{}\" data-value=\"{n}\"><title>{} {}: {n} \
                 message(s)</title></rect>",
                slot.saturating_sub(2).max(1),
                esc(name),
                date(day),
                esc(name),
            );
        }
        if i % label_every == 0 {
            let _ = write!(
                out,
                "<text x=\"{}\" y=\"{}\" class=\"label\" text-anchor=\"middle\">{}</text>",
                x + slot / 2,
                top + plot_h + 16,
                &date(day)[5..]
            );
        }
        out.push_str("</g>");
    }
    let legend: Vec<(&str, &str)> = named
        .iter()
        .enumerate()
        .map(|(k, d)| (*d, PALETTE[k]))
        .chain(others.then_some(("others", PALETTE[PALETTE.len() - 1])))
        .collect();
    for (k, (name, colour)) in legend.iter().enumerate() {
        let x = left + 170 * (k % legend_columns);
        let y = top + plot_h + 30 + 20 * (k / legend_columns);
        let _ = write!(
            out,
            "<rect class=\"key\" x=\"{x}\" y=\"{y}\" width=\"12\" height=\"12\" fill=\"{colour}\"/>\
             <text x=\"{}\" y=\"{}\" class=\"label\">{}</text>",
            x + 16,
            y + 11,
            label(name)
        );
    }
    out.push_str("</svg></figure>\n");
}

/// The top `TOP` of `items` by value, the rest summed as "others".
fn top(mut items: Vec<(String, u64)>, colour: &str) -> Vec<(String, u64, &str)> {
    items.retain(|i| i.1 > 0);
    items.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let rest: u64 = items.iter().skip(TOP).map(|i| i.1).sum();
    let count = items.len();
    let mut bars: Vec<(String, u64, &str)> = items
        .into_iter()
        .take(TOP)
        .map(|(n, v)| (n, v, colour))
        .collect();
    if count > TOP {
        bars.push((
            format!("{} others", count - TOP),
            rest,
            PALETTE[PALETTE.len() - 1],
        ));
    }
    bars
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:24px;color:#222}\
h1{font-size:20px;margin:0 0 4px}p.period{color:#555;margin:0 0 16px}\
.charts{display:flex;flex-wrap:wrap;gap:16px}\
figure.chart{margin:0;padding:12px;border:1px solid #ddd;border-radius:6px;overflow-x:auto}\
figcaption{font-weight:600;margin-bottom:8px}svg text{font-size:11px;fill:#333}\
svg .axis{stroke:#999}svg rect.bar:hover{opacity:.75}\
div.table{overflow-x:auto;margin-top:20px}table{border-collapse:collapse;font-size:13px}\
th,td{border-bottom:1px solid #e5e5e5;padding:4px 8px;white-space:nowrap}\
th{cursor:pointer;background:#f5f5f5;text-align:left;user-select:none}\
th[aria-sort=ascending]::after{content:' \\25B2'}th[aria-sort=descending]::after{content:' \\25BC'}\
td.n,th.n{text-align:right}tfoot td{font-weight:600;border-top:2px solid #999}";

/// Sorts the table by the clicked column (numbers largest first, text A→Z; a second click
/// turns the order round); the totals row (`tfoot`) stays last.
const SCRIPT: &str = r#"(function () {
  var table = document.getElementById("senders");
  if (!table) { return; }
  var heads = table.tHead.rows[0].cells;
  var body = table.tBodies[0];
  function key(row, i, numeric) {
    var v = row.cells[i].getAttribute("data-v");
    if (numeric) { return v === "" ? -1 : parseFloat(v); }
    return v.toLowerCase();
  }
  function sortBy(i) {
    var numeric = heads[i].getAttribute("data-type") === "number";
    var current = heads[i].getAttribute("aria-sort");
    var ascending = current ? current === "descending" : !numeric;
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a, i, numeric), y = key(b, i, numeric);
      var c = x < y ? -1 : x > y ? 1 : 0;
      return ascending ? c : -c;
    });
    for (var k = 0; k < heads.length; k++) { heads[k].removeAttribute("aria-sort"); }
    heads[i].setAttribute("aria-sort", ascending ? "ascending" : "descending");
    rows.forEach(function (r) { body.appendChild(r); });
  }
  for (var i = 0; i < heads.length; i++) {
    heads[i].addEventListener("click", sortBy.bind(null, i));
  }
  table.setAttribute("data-sortable", "ready");
})();"#;

/// Writes the page.
pub fn write_html(report: &Report, out: &mut dyn Write) -> std::io::Result<()> {
    let mut page = String::with_capacity(64 * 1024);
    let period = match (days(report), report.first_event, report.last_event) {
        (Some((first, last)), Some(f), Some(l)) => format!(
            "{} to {} (UTC), {} sender(s), {} message(s); events from {} to {}",
            date(first),
            date(last),
            report.rows.len(),
            report.totals.messages_sent,
            rfc3339(f),
            rfc3339(l)
        ),
        _ => "No matching events".to_string(),
    };
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; \
         style-src 'unsafe-inline'; script-src 'unsafe-inline'\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>SMTP AUTH clients report</title><style>{STYLE}</style></head><body>\
         <h1>SMTP AUTH clients report</h1><p class=\"period\">{}</p><div class=\"charts\">\n",
        esc(&period)
    );
    volume_chart(&mut page, report);
    let senders: Vec<(String, u64)> = report
        .rows
        .iter()
        .map(|r| (r.sender.clone(), r.tally.messages_sent))
        .collect();
    bar_chart(
        &mut page,
        "senders-chart",
        "Messages by sender",
        "message(s)",
        &top(senders, PALETTE[0]),
    );
    let mut domains: BTreeMap<&str, u64> = BTreeMap::new();
    for r in &report.rows {
        *domains.entry(r.domain()).or_default() += r.tally.messages_sent;
    }
    let domains = domains
        .into_iter()
        .map(|(d, n)| (d.to_string(), n))
        .collect();
    bar_chart(
        &mut page,
        "domains-chart",
        "Messages by domain",
        "message(s)",
        &top(domains, PALETTE[3]),
    );
    // A sender counts once under every protocol it sent at least one message with.
    type Count = fn(&super::TlsCounts) -> u64;
    let protocols: [(&str, Count); 5] = [
        ("TLS 1.0", |t| t.v1_0),
        ("TLS 1.1", |t| t.v1_1),
        ("TLS 1.2", |t| t.v1_2),
        ("TLS 1.3", |t| t.v1_3),
        ("No TLS/unknown", |t| t.none_or_unknown),
    ];
    let tls: Vec<(String, u64, &str)> = protocols
        .iter()
        .enumerate()
        .map(|(k, (name, count))| {
            let senders = report
                .rows
                .iter()
                .filter(|r| count(&r.tally.tls) > 0)
                .count() as u64;
            (name.to_string(), senders, PALETTE[[2, 1, 0, 4, 8][k]])
        })
        .collect();
    bar_chart(
        &mut page,
        "tls-chart",
        "Senders by TLS protocol",
        "sender(s)",
        &tls,
    );
    page.push_str("</div>\n");
    write_table(&mut page, report);
    let _ = writeln!(page, "<script>{SCRIPT}</script></body></html>");
    out.write_all(page.as_bytes())
}

/// The sortable table: every cell carries its raw value in `data-v` for the sorter.
fn write_table(page: &mut String, report: &Report) {
    let c = cells(report);
    page.push_str("<div class=\"table\"><table id=\"senders\"><thead><tr>");
    for (h, numeric) in &c.headers {
        let _ = write!(
            page,
            "<th data-type=\"{}\"{} title=\"Sort by {}\">{}</th>",
            if *numeric { "number" } else { "text" },
            if *numeric { " class=\"n\"" } else { "" },
            esc(h),
            esc(h)
        );
    }
    page.push_str("</tr></thead><tbody>\n");
    let row = |page: &mut String, values: &[String]| {
        page.push_str("<tr>");
        for ((_, numeric), v) in c.headers.iter().zip(values) {
            let shown = if *numeric && v.is_empty() { "-" } else { v };
            let _ = write!(
                page,
                "<td{} data-v=\"{}\">{}</td>",
                if *numeric { " class=\"n\"" } else { "" },
                esc(v),
                esc(shown)
            );
        }
        page.push_str("</tr>\n");
    };
    for values in &c.rows {
        row(page, values);
    }
    page.push_str("</tbody><tfoot>");
    row(page, &c.totals);
    page.push_str("</tfoot></table></div>\n");
}
