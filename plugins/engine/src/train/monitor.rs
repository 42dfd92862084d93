//! What a person watching a run sees: a progress line with it/s, ETA and the loss terms;
//! a JSONL log of every logged step; PNG grids (degraded | restored | reference); and a
//! PNG plot of the loss and PSNR curves.
use crate::error::{EngineError, Result};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Kind, Tensor};

pub struct Monitor {
    pub log_path: PathBuf,
    start: Instant,
    start_step: u64,
    total: u64,
    quiet: bool,
}

impl Monitor {
    pub fn new(dir: &Path, start_step: u64, total: u64) -> Self {
        Monitor {
            log_path: dir.join("log.jsonl"),
            start: Instant::now(),
            start_step,
            total,
            quiet: false,
        }
    }

    pub fn quiet(mut self, q: bool) -> Self {
        self.quiet = q;
        self
    }

    /// Append a record to the JSONL log, as one write of the whole line (a kill never leaves
    /// half a record).
    pub fn log(&self, record: &serde_json::Value) -> Result<()> {
        let line = format!("{record}\n");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|e| EngineError::io(&self.log_path, e))?;
        f.write_all(line.as_bytes())
            .map_err(|e| EngineError::io(&self.log_path, e))
    }

    /// Redraw the progress line.
    pub fn progress(&self, step: u64, terms: &BTreeMap<String, f64>) {
        if self.quiet {
            return;
        }
        let done = step.saturating_sub(self.start_step);
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        let rate = done as f64 / secs;
        let eta = if rate > 0.0 {
            (self.total.saturating_sub(step)) as f64 / rate
        } else {
            f64::NAN
        };
        let width = 24;
        let filled = ((step as f64 / self.total.max(1) as f64) * width as f64) as usize;
        let bar: String = "#".repeat(filled.min(width)) + &"-".repeat(width - filled.min(width));
        let terms: Vec<String> = terms.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
        eprint!(
            "\r[{bar}] {step}/{} {rate:.2} it/s ETA {} | {}\x1b[K",
            self.total,
            fmt_secs(eta),
            terms.join(" ")
        );
        let _ = std::io::stderr().flush();
    }

    pub fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
}

/// Cut a run's JSONL log back to the records of steps up to `step`, the step the run resumes
/// from: records of steps after its checkpoint were logged by a process that was killed (or
/// failed) before it saved them, and are logged again when those steps re-run. The log keeps
/// its longest prefix of whole lines (ending in a newline) whose `step` is at most `step`;
/// lines without a readable step are kept. Returns how many bytes were cut.
pub fn truncate_log(path: &Path, step: u64) -> Result<u64> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(EngineError::io(path, e)),
    };
    let mut keep = 0usize;
    while let Some(nl) = bytes[keep..].iter().position(|&b| b == b'\n') {
        let line = &bytes[keep..keep + nl];
        let logged = serde_json::from_slice::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v.get("step").and_then(|s| s.as_u64()));
        if logged.is_some_and(|s| s > step) {
            break;
        }
        keep += nl + 1;
    }
    if keep == bytes.len() {
        return Ok(0);
    }
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| EngineError::io(path, e))?;
    f.set_len(keep as u64)
        .and_then(|_| f.sync_all())
        .map_err(|e| EngineError::io(path, e))?;
    Ok((bytes.len() - keep) as u64)
}

fn fmt_secs(s: f64) -> String {
    if !s.is_finite() {
        return "?".into();
    }
    let s = s as u64;
    format!("{}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

/// Save rows of `(B, 3, H, W)` batches in [-1, 1] (each may have its own size; they are
/// resized to the last one's size with nearest neighbour) as one PNG grid: one image per
/// column, one batch per row... transposed: each sample is a row, each batch a column.
pub fn save_grid(path: &Path, columns: &[&Tensor]) -> Result<()> {
    let (b, _, h, w) = columns.last().expect("columns").size4().expect("4-D");
    let cols: Vec<Tensor> = columns
        .iter()
        .map(|t| {
            let t = if t.size()[1] == 1 {
                t.repeat([1, 3, 1, 1])
            } else {
                t.shallow_clone()
            };
            let t = if t.size()[2] != h || t.size()[3] != w {
                t.upsample_nearest2d([h, w], None, None)
            } else {
                t
            };
            ((t.to_kind(Kind::Float).to_device(tch::Device::Cpu) + 1.0) / 2.0).clamp(0.0, 1.0)
        })
        .collect();
    let rows: Vec<Tensor> = (0..b)
        .map(|i| Tensor::cat(&cols.iter().map(|c| c.get(i)).collect::<Vec<_>>(), 2))
        .collect();
    let grid = Tensor::cat(&rows, 1); // (3, b*h, n*w)
    let (_, gh, gw) = grid.size3().expect("3-D");
    let data = Vec::<u8>::try_from(
        (grid * 255.0)
            .round()
            .permute([1, 2, 0])
            .contiguous()
            .to_kind(Kind::Uint8)
            .flatten(0, -1),
    )
    .expect("u8");
    let img = image::RgbImage::from_raw(gw as u32, gh as u32, data).expect("sizes agree");
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, image::ImageFormat::Png)
        .map_err(|e| EngineError::InvalidInput(format!("png: {e}")))?;
    crate::weights::model_file::write_atomic(path, buf.get_ref())
}

/// Plot curves from the JSONL log: one panel per key in `keys` (x = step), written as PNG.
pub fn plot_log(log: &Path, keys: &[&str], out: &Path) -> Result<()> {
    let text = std::fs::read_to_string(log).map_err(|e| EngineError::io(log, e))?;
    let mut series: Vec<Vec<(f64, f64)>> = vec![Vec::new(); keys.len()];
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(step) = v.get("step").and_then(|s| s.as_f64()) else {
            continue;
        };
        for (i, k) in keys.iter().enumerate() {
            if let Some(y) = v.get(*k).and_then(|y| y.as_f64()).filter(|y| y.is_finite()) {
                series[i].push((step, y));
            }
        }
    }
    let (pw, ph) = (480u32, 200u32);
    let mut img =
        image::RgbImage::from_pixel(pw, ph * keys.len() as u32, image::Rgb([255, 255, 255]));
    let colors = [
        [31u8, 119, 180],
        [214, 39, 40],
        [44, 160, 44],
        [148, 103, 189],
        [255, 127, 14],
        [23, 190, 207],
    ];
    for (i, s) in series.iter().enumerate() {
        let y0 = i as u32 * ph;
        for x in 0..pw {
            img.put_pixel(x, y0 + ph - 1, image::Rgb([180, 180, 180]));
        }
        if s.len() < 2 {
            continue;
        }
        let (xmin, xmax) = s
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
        let (ymin, ymax) = s
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
        let sx = |x: f64| (8.0 + (x - xmin) / (xmax - xmin).max(1e-12) * (pw as f64 - 16.0)) as i64;
        let sy = |y: f64| {
            (y0 as f64 + 8.0 + (1.0 - (y - ymin) / (ymax - ymin).max(1e-12)) * (ph as f64 - 16.0))
                as i64
        };
        let c = image::Rgb(colors[i % colors.len()]);
        for w in s.windows(2) {
            let (ax, ay, bx, by) = (sx(w[0].0), sy(w[0].1), sx(w[1].0), sy(w[1].1));
            let n = (bx - ax).abs().max((by - ay).abs()).max(1);
            for k in 0..=n {
                let x = ax + (bx - ax) * k / n;
                let y = ay + (by - ay) * k / n;
                if x >= 0 && (x as u32) < pw && y >= 0 && (y as u32) < img.height() {
                    img.put_pixel(x as u32, y as u32, c);
                }
            }
        }
    }
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, image::ImageFormat::Png)
        .map_err(|e| EngineError::InvalidInput(format!("png: {e}")))?;
    crate::weights::model_file::write_atomic(out, buf.get_ref())?;
    // The panel order and value ranges, for the reader of the PNG.
    let legend: Vec<String> = keys
        .iter()
        .zip(&series)
        .map(|(k, s)| {
            let (lo, hi) = s
                .iter()
                .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
            format!("{k}: {lo:.4} .. {hi:.4} over {} points", s.len())
        })
        .collect();
    crate::weights::model_file::write_atomic(
        &out.with_extension("txt"),
        (legend.join("\n") + "\n").as_bytes(),
    )
}
