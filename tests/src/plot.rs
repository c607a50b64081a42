//! The benchmarks' figures: SVG charts (plotters) written where `STATEFUN_FIGURES`
//! says (bench/all.sh sets it to `bench/figures`); without it, benchmarks only print.

use std::path::PathBuf;

use plotters::prelude::*;

const COLOURS: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
];

/// About 200 points of a sorted, non-empty sample's CDF: (value, fraction at or below).
pub fn cdf(sorted: &[f64]) -> Vec<(f64, f64)> {
    let step = (sorted.len() / 200).max(1);
    (0..sorted.len())
        .step_by(step)
        .chain(std::iter::once(sorted.len() - 1))
        .map(|i| (sorted[i], (i + 1) as f64 / sorted.len() as f64))
        .collect()
}

/// Where a figure named `name` goes, if figures are wanted.
fn target(name: &str) -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("STATEFUN_FIGURES")?);
    std::fs::create_dir_all(&dir).expect("the figures dir");
    Some(dir.join(format!("{name}.svg")))
}

/// A white canvas with `command` (what reproduces the figure) written along its foot;
/// the chart goes in the area above it.
fn canvas<'a>(
    path: &'a std::path::Path,
    command: &str,
) -> DrawingArea<SVGBackend<'a>, plotters::coord::Shift> {
    let root = SVGBackend::new(path, (720, 440)).into_drawing_area();
    root.fill(&WHITE).expect("draw");
    let (chart, foot) = root.split_vertically(418);
    foot.draw_text(
        &format!("$ {command}"),
        &("monospace", 11).into_font().color(&BLACK.mix(0.7)),
        (12, 2),
    )
    .expect("draw the command");
    chart
}

/// A line chart: one line per series of `(x, y)` points; `log_x` for a log-scale x;
/// `command` reproduces it.
pub fn lines(
    name: &str,
    title: &str,
    command: &str,
    (x_desc, y_desc): (&str, &str),
    log_x: bool,
    series: &[(&str, Vec<(f64, f64)>)],
) {
    let Some(path) = target(name) else { return };
    let points = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x_max, mut y_max, mut x_min) = (0f64, 0f64, f64::MAX);
    for (x, y) in points {
        x_max = x_max.max(*x);
        x_min = x_min.min(*x);
        y_max = y_max.max(*y);
    }
    let root = canvas(&path, command);
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70);
    let y_range = 0f64..(y_max * 1.1).max(f64::MIN_POSITIVE);
    if log_x {
        let x_range = (x_min.max(f64::MIN_POSITIVE)..x_max * 1.5).log_scale();
        draw_lines(&mut builder, x_range, y_range, (x_desc, y_desc), series);
    } else {
        draw_lines(
            &mut builder,
            x_min.min(0.0)..x_max * 1.05,
            y_range,
            (x_desc, y_desc),
            series,
        );
    }
    root.present().expect("write the figure");
    println!("figure: {}", path.display());
}

fn draw_lines<X>(
    builder: &mut ChartBuilder<'_, '_, SVGBackend<'_>>,
    x_range: X,
    y_range: std::ops::Range<f64>,
    (x_desc, y_desc): (&str, &str),
    series: &[(&str, Vec<(f64, f64)>)],
) where
    X: plotters::coord::ranged1d::AsRangedCoord<Value = f64>,
    X::CoordDescType: plotters::coord::ranged1d::ValueFormatter<f64>,
{
    let mut chart = builder.build_cartesian_2d(x_range, y_range).expect("chart");
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .draw()
        .expect("mesh");
    for (i, (label, points)) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        chart
            .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))
            .expect("series")
            .label(*label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
        chart
            .draw_series(points.iter().map(|p| Circle::new(*p, 3, colour.filled())))
            .expect("points");
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .expect("legend");
}

/// A grouped bar chart: for each category, one bar per series (values in series order);
/// `command` reproduces it.
pub fn bars(
    name: &str,
    title: &str,
    command: &str,
    y_desc: &str,
    series: &[&str],
    categories: &[(&str, Vec<f64>)],
) {
    if let Some(path) = target(name) {
        draw_bars(&path, (title, command), y_desc, series, categories);
        println!("figure: {}", path.display());
    }
}

fn draw_bars(
    path: &std::path::Path,
    (title, command): (&str, &str),
    y_desc: &str,
    series: &[&str],
    categories: &[(&str, Vec<f64>)],
) {
    let y_max = categories
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(0f64, f64::max);
    let root = canvas(path, command);
    let n = categories.len();
    // Category i spans [i - 0.5, i + 0.5]: its label sits on the tick at i.
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 17))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(
            -0.5f64..n as f64 - 0.5,
            0f64..(y_max * 1.4).max(f64::MIN_POSITIVE),
        )
        .expect("chart");
    let labels: Vec<String> = categories.iter().map(|(c, _)| c.to_string()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n.max(1))
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                labels.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc(y_desc)
        .draw()
        .expect("mesh");
    let width = 0.8 / series.len().max(1) as f64;
    for (s, label) in series.iter().enumerate() {
        let colour = COLOURS[s % COLOURS.len()];
        let left = |i: usize| i as f64 - 0.4 + s as f64 * width;
        chart
            .draw_series(
                categories
                    .iter()
                    .enumerate()
                    .filter_map(|(i, (_, values))| {
                        let v = *values.get(s)?;
                        Some(Rectangle::new(
                            [(left(i), 0.0), (left(i) + width, v)],
                            colour.filled(),
                        ))
                    }),
            )
            .expect("bars")
            .label(*label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled()));
        chart
            .draw_series(
                categories
                    .iter()
                    .enumerate()
                    .filter_map(|(i, (_, values))| {
                        let v = *values.get(s)?;
                        let text = format!("{v:.2}");
                        Some(
                            EmptyElement::at((left(i), v))
                                + Text::new(
                                    text,
                                    (0, -14),
                                    ("sans-serif", 11).into_font().color(&BLACK),
                                ),
                        )
                    }),
            )
            .expect("values");
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .draw()
        .expect("legend");
    root.present().expect("write the figure");
}

/// Today's date (UTC) as `YYYY-MM-DD`, for the measurements a bench writes down.
pub fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Days to a civil date (Howard Hinnant's algorithm, proleptic Gregorian).
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_bar_chart_names_its_categories_shows_its_values_and_its_command() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bars.svg");
        super::draw_bars(
            &path,
            (
                "per message",
                "cargo bench -p statefun-e2e --bench aws_requests",
            ),
            "count",
            &["requests", "write units"],
            &[
                ("direct", vec![0.29, 2.0]),
                ("keyed ingress", vec![0.29, 2.56]),
            ],
        );
        let svg = std::fs::read_to_string(&path).expect("the figure");
        for text in [
            "direct",
            "keyed ingress",
            "0.29",
            "2.56",
            "write units",
            "$ cargo bench -p statefun-e2e --bench aws_requests",
        ] {
            assert!(svg.contains(text), "{text} missing");
        }
    }

    #[test]
    fn today_is_a_date() {
        let d = super::today();
        let parts: Vec<u32> = d.split('-').map(|p| p.parse().expect("number")).collect();
        assert!(matches!(parts[..], [y, 1..=12, 1..=31] if y >= 2026), "{d}");
    }
}
