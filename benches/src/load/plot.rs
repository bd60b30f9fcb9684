//! The latency plot: end-to-end latency percentiles (p50, p99, p99.9)
//! against offered load, one line per target, as a PNG. The gap between a
//! proxy's line and `direct` is the latency it adds.
//!
//! Text needs a TrueType font; the first of [`FONTS`] that exists is used.
//! Without one the plot is drawn without text (the report's tables carry
//! the numbers).

use std::path::Path;

use plotters::prelude::*;

/// Fonts tried for labels, in order.
pub(crate) const FONTS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// One target's line: (offered events/s, [p50, p99, p99.9] in µs).
pub(crate) type Series = (String, Vec<(f64, [f64; 3])>);

/// What went wrong drawing.
#[derive(Debug, thiserror::Error)]
#[error("plot: {0}")]
pub(crate) struct PlotError(String);

fn err(e: impl std::fmt::Display) -> PlotError {
    PlotError(e.to_string())
}

/// Registers the first font found; true when text can be drawn.
fn load_font() -> bool {
    static LOADED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *LOADED.get_or_init(|| {
        FONTS.iter().any(|path| {
            let Ok(bytes) = std::fs::read(path) else {
                return false;
            };
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
        })
    })
}

fn color(i: usize) -> RGBColor {
    [
        RGBColor(90, 90, 90),
        RGBColor(214, 39, 40),
        RGBColor(31, 119, 180),
        RGBColor(44, 160, 44),
        RGBColor(148, 103, 189),
    ][i % 5]
}

/// Draws `series` to `path` (PNG).
pub(crate) fn latency_plot(path: &Path, title: &str, series: &[Series]) -> Result<(), PlotError> {
    let text = load_font();
    let root = BitMapBackend::new(path, (1500, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = if text {
        root.titled(title, ("sans-serif", 22)).map_err(err)?
    } else {
        root
    };
    let panels = root.split_evenly((1, 3));
    let points = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x_lo, mut x_hi, mut y_lo, mut y_hi) = (f64::MAX, 0f64, f64::MAX, 0f64);
    for (x, ys) in points {
        x_lo = x_lo.min(*x);
        x_hi = x_hi.max(*x);
        for y in ys {
            y_lo = y_lo.min(*y);
            y_hi = y_hi.max(*y);
        }
    }
    if x_hi <= 0.0 || y_hi <= 0.0 {
        return Err(PlotError("nothing to plot".into()));
    }
    let (x_lo, x_hi) = (x_lo * 0.8, x_hi * 1.25);
    let (y_lo, y_hi) = ((y_lo * 0.7).max(1.0), y_hi * 1.5);
    for (panel, (q, name)) in panels
        .iter()
        .zip(["p50", "p99", "p99.9"].iter().enumerate())
    {
        let mut builder = ChartBuilder::on(panel);
        builder.margin(12);
        if text {
            builder
                .caption(format!("{name} latency"), ("sans-serif", 18))
                .x_label_area_size(40)
                .y_label_area_size(60);
        }
        let mut chart = builder
            .build_cartesian_2d((x_lo..x_hi).log_scale(), (y_lo..y_hi).log_scale())
            .map_err(err)?;
        let mut mesh = chart.configure_mesh();
        if text {
            mesh.x_labels(6)
                .y_labels(8)
                .light_line_style(RGBColor(238, 238, 238))
                .x_desc("offered events/s")
                .y_desc("us, upstream to client")
                .x_label_formatter(&|x| format!("{x:.0}"))
                .y_label_formatter(&|y| format!("{y:.0}"));
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw().map_err(err)?;
        for (i, (target, pts)) in series.iter().enumerate() {
            let c = color(i);
            let line: Vec<(f64, f64)> = pts.iter().map(|(x, ys)| (*x, ys[q])).collect();
            let drawn = chart
                .draw_series(LineSeries::new(line.clone(), c.stroke_width(2)))
                .map_err(err)?;
            if text {
                drawn.label(target.as_str()).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2))
                });
            }
            chart
                .draw_series(line.iter().map(|p| Circle::new(*p, 3, c.filled())))
                .map_err(err)?;
        }
        if text {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .label_font(("sans-serif", 14))
                .draw()
                .map_err(err)?;
        }
    }
    root.present().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_png() {
        let dir = std::env::temp_dir().join(format!("load-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.png");
        let series = vec![
            (
                "direct".to_owned(),
                vec![
                    (1000.0, [50.0, 90.0, 120.0]),
                    (10000.0, [60.0, 110.0, 300.0]),
                ],
            ),
            (
                "shadowcat".to_owned(),
                vec![
                    (1000.0, [70.0, 130.0, 200.0]),
                    (10000.0, [90.0, 180.0, 500.0]),
                ],
            ),
        ];
        latency_plot(&path, "test", &series).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        assert!(latency_plot(&path, "empty", &[]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
