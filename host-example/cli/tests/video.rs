//! `davi video` between two Debian ffmpeg processes, as docs/hosts/video.md shows it: ffmpeg
//! generates a noisy clip from a held-out photograph (a moving crop plus ffmpeg's own noise
//! filter, seeded), `davi video` restores it frame by frame, and a second ffmpeg encodes the
//! result losslessly (FFV1). The test decodes that file and checks the frame count and that
//! every frame is closer to the clean clip than its noisy input; a truncated stream must fail
//! without a partial frame. Needs ffmpeg (`scripts/setup-hosts.sh`), the default denoising
//! model and the held-out photographs (`scripts/fetch-photos.sh`); missing ones fail the test.
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const W: usize = 96;
const H: usize = 64;
const FRAMES: usize = 6;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn davi() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_davi"));
    c.env("DAVI_MODEL_DIR", root().join("models"));
    c
}

fn scratch(name: &str) -> PathBuf {
    let d =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("video-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// ffmpeg arguments that generate the test clip as raw rgb24 on stdout: a crop of a held-out
/// photo moving 3 px per frame, with ffmpeg's temporal noise filter when `noise` is set.
fn clip_args(noise: bool) -> Vec<String> {
    let photo = root().join("data/photos/heldout/chelsea.png");
    assert!(
        photo.is_file(),
        "{} is missing: run scripts/fetch-photos.sh",
        photo.display()
    );
    let mut vf = format!("crop={W}:{H}:'150+3*n':100");
    if noise {
        vf.push_str(",noise=alls=40:allf=t:all_seed=7");
    }
    [
        "-loglevel",
        "error",
        "-loop",
        "1",
        "-i",
        photo.to_str().unwrap(),
        "-vf",
        &vf,
        "-frames:v",
        &FRAMES.to_string(),
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn ffmpeg() -> Command {
    let mut c = Command::new("ffmpeg");
    c.arg("-nostdin");
    c
}

fn ffmpeg_output(args: &[String]) -> Vec<u8> {
    let out = ffmpeg()
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run ffmpeg ({e}): scripts/setup-hosts.sh installs it"));
    assert!(
        out.status.success(),
        "ffmpeg failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn psnr(a: &[u8], b: &[u8]) -> f64 {
    let mse = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    10.0 * (255.0f64.powi(2) / mse.max(1e-12)).log10()
}

#[test]
fn ffmpeg_to_davi_video_to_ffmpeg_restores_every_frame() {
    let dir = scratch("ffmpeg");
    let encoded = dir.join("restored.mkv");
    // ffmpeg (noisy clip) | davi video | ffmpeg (lossless encode), all three at once.
    let mut source = ffmpeg()
        .args(clip_args(true))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("ffmpeg");
    let mut restorer = davi()
        .args([
            "video",
            "--width",
            &W.to_string(),
            "--height",
            &H.to_string(),
            "--task",
            "denoise",
        ])
        .args(["--device", "cpu", "--batch", "4", "--progress-json"])
        .stdin(source.stdout.take().unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("davi video");
    let sink = ffmpeg()
        .args([
            "-loglevel",
            "error",
            "-y",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-s",
            &format!("{W}x{H}"),
        ])
        .args(["-r", "25", "-i", "-", "-c:v", "ffv1", "-pix_fmt", "bgr0"])
        .arg(&encoded)
        .stdin(restorer.stdout.take().unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ffmpeg encoder");
    // Drain davi's stderr while it runs (a full pipe would stall it).
    let mut progress = String::new();
    restorer
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut progress)
        .unwrap();
    assert!(
        source.wait().unwrap().success(),
        "the generating ffmpeg failed"
    );
    assert!(
        restorer.wait().unwrap().success(),
        "davi video failed: {progress}"
    );
    let sink_out = sink.wait_with_output().unwrap();
    assert!(
        sink_out.status.success(),
        "the encoding ffmpeg failed: {}",
        String::from_utf8_lossy(&sink_out.stderr)
    );
    let last: serde_json::Value =
        serde_json::from_str(progress.lines().last().expect("progress lines")).unwrap();
    assert_eq!(last["frame"], FRAMES as u64, "{progress}");

    let restored = ffmpeg_output(&[
        "-loglevel".into(),
        "error".into(),
        "-i".into(),
        encoded.to_str().unwrap().into(),
        "-f".into(),
        "rawvideo".into(),
        "-pix_fmt".into(),
        "rgb24".into(),
        "-".into(),
    ]);
    let (clean, noisy) = (
        ffmpeg_output(&clip_args(false)),
        ffmpeg_output(&clip_args(true)),
    );
    let frame = W * H * 3;
    assert_eq!(clean.len(), FRAMES * frame);
    assert_eq!(noisy.len(), FRAMES * frame);
    assert_eq!(
        restored.len(),
        FRAMES * frame,
        "the encoded clip has {} bytes, not {FRAMES} frames",
        restored.len()
    );
    for i in 0..FRAMES {
        let r = i * frame..(i + 1) * frame;
        let (before, after) = (
            psnr(&noisy[r.clone()], &clean[r.clone()]),
            psnr(&restored[r.clone()], &clean[r]),
        );
        eprintln!("frame {i}: PSNR noisy {before:.2} dB, restored {after:.2} dB");
        assert!(
            after > before + 1.0,
            "frame {i}: restored {after:.2} dB, noisy {before:.2} dB"
        );
    }
}

#[test]
fn a_truncated_stream_fails_after_the_whole_frames() {
    let frame = W * H * 3;
    let input: Vec<u8> = (0..frame * 2 + frame / 2)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    let mut child = davi()
        .args([
            "video",
            "--width",
            &W.to_string(),
            "--height",
            &H.to_string(),
            "--task",
            "denoise",
            "--device",
            "cpu",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(!out.status.success());
    assert_eq!(
        out.stdout.len(),
        2 * frame,
        "only whole restored frames may be written"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("davi: error:") && err.lines().count() == 1,
        "{err}"
    );
}

#[test]
fn super_resolution_reports_its_output_size_and_bad_sizes_are_refused() {
    let out = davi()
        .args([
            "video",
            "--width",
            "96",
            "--height",
            "64",
            "--task",
            "sr4",
            "--print-output-size",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "384x256");
    let out = davi()
        .args([
            "video", "--width", "0", "--height", "64", "--task", "denoise",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("davi: error:"));
}
