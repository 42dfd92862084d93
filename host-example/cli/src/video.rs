//! `davi video`: restore a raw video stream frame by frame, stdin to stdout, for ffmpeg pipes.
//!
//! ```sh
//! ffmpeg -loglevel error -i in.mp4 -f rawvideo -pix_fmt rgb24 - \
//!   | davi video --width 640 --height 360 --task denoise \
//!   | ffmpeg -loglevel error -f rawvideo -pix_fmt rgb24 -s 640x360 -r 25 -i - out.mp4
//! ```
//! Frames are raw interleaved samples (`rgb24`, `rgb48le`, `gray`, `gray16le`); the output
//! uses the input's format at the restored size (×factor for super-resolution, so tell the
//! encoder `-s` accordingly; `--print-output-size` prints it). Frames are batched
//! (`--batch`) through one network evaluation. A truncated last frame, a failed restore or a
//! closed stdout ends the run with a non-zero exit and a one-line error; nothing is written
//! for a frame that failed. `--progress-json` prints one JSON object per frame on stderr.
//! Uses read and write on the standard streams only, so a reader never waits on a full
//! stderr pipe of ours for long: progress lines are short and flushed per batch.
use anyhow::{bail, Context, Result};
use davi_engine::pipeline;
use davi_engine::restore::{RestoreOptions, Restorer};
use davi_sdk::OperatorSpec;
use std::io::{Read, Write};
use tch::{Kind, Tensor};

/// Raw pixel formats of the pipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PixFmt {
    Rgb24,
    Rgb48le,
    Gray,
    Gray16le,
}

impl PixFmt {
    pub fn channels(self) -> usize {
        match self {
            PixFmt::Rgb24 | PixFmt::Rgb48le => 3,
            PixFmt::Gray | PixFmt::Gray16le => 1,
        }
    }
    pub fn bytes_per_sample(self) -> usize {
        match self {
            PixFmt::Rgb24 | PixFmt::Gray => 1,
            PixFmt::Rgb48le | PixFmt::Gray16le => 2,
        }
    }
}

/// Decode one frame into `(C, H, W)` f32 in [0, 1].
pub fn decode(buf: &[u8], fmt: PixFmt, w: usize, h: usize) -> Tensor {
    let c = fmt.channels();
    let v: Vec<f32> = if fmt.bytes_per_sample() == 1 {
        buf.iter().map(|&b| b as f32 / 255.0).collect()
    } else {
        buf.chunks_exact(2)
            .map(|p| u16::from_le_bytes([p[0], p[1]]) as f32 / 65535.0)
            .collect()
    };
    Tensor::from_slice(&v)
        .view([h as i64, w as i64, c as i64])
        .permute([2, 0, 1])
}

/// Encode `(C, H, W)` in [0, 1] (rounded, clamped) into raw samples.
pub fn encode(t: &Tensor, fmt: PixFmt) -> Vec<u8> {
    let max = if fmt.bytes_per_sample() == 1 {
        255.0
    } else {
        65535.0
    };
    let t = (t.clamp(0.0, 1.0) * max)
        .round()
        .permute([1, 2, 0])
        .contiguous()
        .to_kind(Kind::Float);
    let v = Vec::<f32>::try_from(t.view([-1])).expect("f32 frame");
    if fmt.bytes_per_sample() == 1 {
        v.into_iter().map(|x| x as u8).collect()
    } else {
        v.into_iter()
            .flat_map(|x| (x as u16).to_le_bytes())
            .collect()
    }
}

/// Read exactly one frame; `Ok(false)` at a clean end of stream.
fn read_frame(r: &mut impl Read, buf: &mut [u8], index: usize) -> Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => bail!(
                "frame {index} is truncated: {filled} of {} bytes (wrong \
                --width/--height/--pix-fmt?)",
                buf.len()
            ),
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("reading stdin"),
        }
    }
    Ok(true)
}

pub struct VideoJob<'a> {
    pub restorer: &'a Restorer,
    pub spec: &'a OperatorSpec,
    pub fmt: PixFmt,
    pub width: usize,
    pub height: usize,
    pub batch: usize,
    pub opts: RestoreOptions,
    pub progress_json: bool,
}

impl VideoJob<'_> {
    /// Output frame size.
    pub fn output_size(&self) -> (i64, i64) {
        let (h, w) = pipeline::output_size(self.spec, self.height as i64, self.width as i64);
        (w, h)
    }

    /// Process the whole stream; returns the number of frames written.
    pub fn run(&self, input: &mut impl Read, output: &mut impl Write) -> Result<usize> {
        let frame_bytes =
            self.width * self.height * self.fmt.channels() * self.fmt.bytes_per_sample();
        let mut buf = vec![0u8; frame_bytes];
        let start = std::time::Instant::now();
        let mut done = 0usize;
        // A truncated frame ends the stream with an error, after the whole frames before it
        // are restored and written: an encoder downstream keeps every complete frame.
        let mut failure = None;
        while failure.is_none() {
            let mut frames = Vec::with_capacity(self.batch);
            while frames.len() < self.batch {
                match read_frame(input, &mut buf, done + frames.len()) {
                    Ok(true) => frames.push(decode(&buf, self.fmt, self.width, self.height)),
                    Ok(false) => break,
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            if frames.is_empty() {
                break;
            }
            let obs = Tensor::stack(&frames, 0);
            let device = self.restorer.device;
            let problem = pipeline::problem_from_observation(
                self.spec,
                &obs,
                self.restorer.model.meta.unet.in_channels,
                device,
            )?;
            let x =
                self.restorer
                    .restore(problem.op.as_ref(), &problem.y, &self.opts, &mut |_| true)?;
            let mut pic = pipeline::to_picture(&x, problem.gray_out).to_device(tch::Device::Cpu);
            if self.fmt.channels() == 1 && pic.size()[1] == 3 {
                pic = pic.mean_dim(1, true, Kind::Float);
            }
            for i in 0..frames.len() {
                output
                    .write_all(&encode(&pic.get(i as i64), self.fmt))
                    .context("writing stdout")?;
            }
            output.flush().context("writing stdout")?;
            done += frames.len();
            if self.progress_json {
                let fps = done as f64 / start.elapsed().as_secs_f64().max(1e-9);
                eprintln!("{{\"frame\":{done},\"fps\":{fps:.3}}}");
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(done),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_round_trip() {
        for fmt in [
            PixFmt::Rgb24,
            PixFmt::Rgb48le,
            PixFmt::Gray,
            PixFmt::Gray16le,
        ] {
            let n = 5 * 4 * fmt.channels() * fmt.bytes_per_sample();
            let bytes: Vec<u8> = (0..n).map(|i| (i * 37 % 251) as u8).collect();
            let t = decode(&bytes, fmt, 5, 4);
            assert_eq!(t.size(), vec![fmt.channels() as i64, 4, 5]);
            assert_eq!(encode(&t, fmt), bytes, "{fmt:?}");
        }
    }

    #[test]
    fn truncated_frames_are_errors() {
        let mut buf = vec![0u8; 12];
        let mut r: &[u8] = &[1, 2, 3];
        assert!(read_frame(&mut r, &mut buf, 0).is_err());
        let mut r: &[u8] = &[];
        assert!(!read_frame(&mut r, &mut buf, 0).unwrap());
    }
}
