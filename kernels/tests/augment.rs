//! The rotation against its definition: a quarter turn moves every pixel to its rotated
//! place, a small angle matches bilinear interpolation written out, and what comes in from
//! outside takes each channel's fill value.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use common::on_threads;

use kd_kernels::augment::rotate;

#[test]
fn a_quarter_turn_moves_every_pixel_to_its_place() {
    let (c, h, w) = (2, 5, 5);
    let x: Vec<f32> = (0..c * h * w).map(|i| i as f32).collect();
    let mut y = x.clone();
    let mut scratch = vec![0f32; x.len()];
    rotate(
        &mut y,
        &mut scratch,
        (c, h, w),
        std::f64::consts::FRAC_PI_2,
        &[-1.0, -2.0],
    );
    for ch in 0..c {
        for i in 0..h {
            for j in 0..w {
                // Output (i, j) reads source (cos y - sin x, sin y + cos x) around the
                // centre: at a quarter turn, source row w - 1 - j, column i.
                let want = x[(ch * h + (w - 1 - j)) * w + i];
                let got = y[(ch * h + i) * w + j];
                assert!(
                    (got - want).abs() < 1e-4,
                    "({ch}, {i}, {j}): {got} vs {want}"
                );
            }
        }
    }
}

#[test]
fn a_small_angle_is_bilinear_interpolation_with_the_fill_outside() {
    let (h, w) = (6, 7);
    let x: Vec<f32> = (0..h * w).map(|i| ((i * 37) % 11) as f32).collect();
    let angle = 0.3f64;
    let mut y = x.clone();
    let mut scratch = vec![0f32; x.len()];
    rotate(&mut y, &mut scratch, (1, h, w), angle, &[-5.0]);
    let (cy, cx) = ((h as f64 - 1.0) / 2.0, (w as f64 - 1.0) / 2.0);
    let at = |r: f64, s: f64| -> f64 {
        if r < 0.0 || s < 0.0 || r >= h as f64 || s >= w as f64 {
            -5.0
        } else {
            f64::from(x[r as usize * w + s as usize])
        }
    };
    for i in 0..h {
        for j in 0..w {
            let (dy, dx) = (i as f64 - cy, j as f64 - cx);
            let sy = angle.cos() * dy - angle.sin() * dx + cy;
            let sx = angle.sin() * dy + angle.cos() * dx + cx;
            let (r, s) = (sy.floor(), sx.floor());
            let (fy, fx) = (sy - r, sx - s);
            let want = (at(r, s) * (1.0 - fx) + at(r, s + 1.0) * fx) * (1.0 - fy)
                + (at(r + 1.0, s) * (1.0 - fx) + at(r + 1.0, s + 1.0) * fx) * fy;
            let got = f64::from(y[i * w + j]);
            assert!((got - want).abs() < 1e-5, "({i}, {j}): {got} vs {want}");
        }
    }
}

#[test]
fn noise_does_not_depend_on_the_thread_count_and_pairs_its_draws() {
    use kd_kernels::augment::add_noise;
    let n = 2 * 16_384 + 5;
    let run = |threads: usize| {
        on_threads(threads, || {
            let mut x = vec![0f32; n];
            add_noise(&mut x, 1.0, 0x1234, 6);
            x
        })
    };
    let one = run(1);
    assert_eq!(one, run(3));
    // A stretch that starts two values later is the same stream two values on.
    let mut later = vec![0f32; 10];
    add_noise(&mut later, 1.0, 0x1234, 8);
    assert_eq!(&later[..], &one[2..12]);
    assert!(one.iter().all(|v| v.is_finite()));
}
