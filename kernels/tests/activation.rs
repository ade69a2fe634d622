//! The branch-free `exp`, `sigmoid`, `tanh`, `erf` and GELU against f64's functions, and
//! the masked softmax and its backward against their definitions.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use kd_kernels::activation::{
    erf, exp, gelu, gelu_backward, masked_softmax, sigmoid, sigmoid_backward, sigmoid_values,
    softmax_backward, tanh, tanh_backward, tanh_values,
};

/// Every 1/64 from -90 to 90, and the values around the clamps.
fn inputs() -> Vec<f32> {
    (-90 * 64..=90 * 64).map(|i| i as f32 / 64.0).collect()
}

#[test]
fn exp_is_within_a_few_ulp_over_the_whole_range() {
    for x in inputs() {
        let expected = f64::from(x).exp();
        let got = f64::from(exp(x));
        if expected < 2.0 * f64::from(f32::MIN_POSITIVE) {
            // At the bottom of f32's normal range: flushed to zero, or close.
            assert!(got <= 2.4e-38, "exp({x}) = {got}");
        } else if expected > f64::from(f32::MAX) {
            assert!(got > 1e38, "exp({x}) = {got}");
        } else {
            let relative = ((got - expected) / expected).abs();
            assert!(
                relative < 4e-7,
                "exp({x}): {got} vs {expected} ({relative})"
            );
        }
    }
}

#[test]
fn sigmoid_tanh_and_erf_are_close_to_f64() {
    for x in inputs() {
        let xd = f64::from(x);
        let s = 1.0 / (1.0 + (-xd).exp());
        assert!(
            (f64::from(sigmoid(x)) - s).abs() <= 1e-6 * s + 1e-7,
            "sigmoid({x})"
        );
        assert!((f64::from(tanh(x)) - xd.tanh()).abs() <= 2e-7, "tanh({x})");
        // erf against the series / asymptotics f64 gives through erfc's relation to exp.
        let e = erf_f64(xd);
        assert!(
            (f64::from(erf(x)) - e).abs() <= 5e-7,
            "erf({x}): {} vs {e}",
            erf(x)
        );
    }
}

/// erf by its Maclaurin series for |x| < 3 and 1 beyond (where erf differs from 1 by less
/// than 2.3e-5 at 3 and by far less above, checked by the continued fraction).
fn erf_f64(x: f64) -> f64 {
    let a = x.abs();
    let value = if a < 3.0 {
        let mut term = a;
        let mut sum = a;
        for n in 1..200 {
            term *= -a * a / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // erfc(a) ~ e^{-a^2} / (a sqrt(pi)) (1 - 1/(2a^2) + 3/(4a^4) - ...)
        let inv = 1.0 / (a * a);
        let series = 1.0 - 0.5 * inv + 0.75 * inv * inv - 1.875 * inv * inv * inv;
        1.0 - (-a * a).exp() / (a * std::f64::consts::PI.sqrt()) * series
    };
    value.copysign(x)
}

#[test]
fn gelu_and_its_gradient_match_the_definition() {
    let x: Vec<f32> = (-2000..=2000).map(|i| i as f32 / 250.0).collect();
    let g: Vec<f32> = x.iter().map(|v| 0.5 + v.sin()).collect();
    let y = gelu(&x);
    let dx = gelu_backward(&x, &g);
    for i in 0..x.len() {
        let xd = f64::from(x[i]);
        let cdf = 0.5 * (1.0 + erf_f64(xd / std::f64::consts::SQRT_2));
        let pdf = (-0.5 * xd * xd).exp() / (2.0 * std::f64::consts::PI).sqrt();
        let expected = xd * cdf;
        assert!(
            (f64::from(y[i]) - expected).abs() <= 1e-5 * expected.abs() + 1e-6,
            "gelu({xd})"
        );
        let expected = f64::from(g[i]) * (cdf + xd * pdf);
        assert!(
            (f64::from(dx[i]) - expected).abs() <= 1e-5 * expected.abs() + 1e-6,
            "gelu'({xd})"
        );
    }
}

#[test]
fn masked_softmax_matches_the_definition() {
    // Rows shorter than the kernels' 16 lanes, and rows of two whole lanes and a rest.
    for len in [7, 37] {
        masked_softmax_rows_of(len);
    }
}

fn masked_softmax_rows_of(len: usize) {
    let (rows, rows_per_mask) = (12, 3);
    let scores: Vec<f32> = (0..rows * len)
        .map(|i| ((i * 37) % 23) as f32 / 3.0 - 4.0)
        .collect();
    // Mask rows: all real, three real, none real, one real.
    let mask: Vec<f32> = [len, 3, 0, 1]
        .iter()
        .flat_map(|&n| (0..len).map(move |k| if k < n { 1.0 } else { 0.0 }))
        .collect();
    let scale = 0.7f32;
    let scale64 = f64::from(scale);
    let mut w = scores.clone();
    masked_softmax(&mut w, len, scale, Some(&mask), rows_per_mask);
    for r in 0..rows {
        let keys = &mask[r / rows_per_mask * len..][..len];
        let real: Vec<usize> = (0..len).filter(|&k| keys[k] != 0.0).collect();
        let row = &scores[r * len..(r + 1) * len];
        for k in 0..len {
            let expected = if real.is_empty() {
                1.0 / len as f64
            } else if keys[k] == 0.0 {
                0.0
            } else {
                let max = real
                    .iter()
                    .map(|&j| f64::from(row[j]) * scale64)
                    .fold(f64::MIN, f64::max);
                let sum: f64 = real
                    .iter()
                    .map(|&j| (f64::from(row[j]) * scale64 - max).exp())
                    .sum();
                (f64::from(row[k]) * scale64 - max).exp() / sum
            };
            let got = f64::from(w[r * len + k]);
            assert!(
                (got - expected).abs() <= 1e-6,
                "row {r} key {k}: {got} vs {expected}"
            );
        }
    }
    // The backward: scale * w * (g - sum(g * w)).
    let grad: Vec<f32> = (0..rows * len)
        .map(|i| ((i * 11) % 13) as f32 / 6.0 - 1.0)
        .collect();
    let mut d = grad.clone();
    softmax_backward(&w, &mut d, len, scale);
    for r in 0..rows {
        let at = r * len..(r + 1) * len;
        let dot: f64 = w[at.clone()]
            .iter()
            .zip(&grad[at.clone()])
            .map(|(&w, &g)| f64::from(w) * f64::from(g))
            .sum();
        for i in at {
            let expected = f64::from(scale) * f64::from(w[i]) * (f64::from(grad[i]) - dot);
            assert!((f64::from(d[i]) - expected).abs() <= 1e-6, "gradient {i}");
        }
    }
}

#[test]
fn tanh_and_sigmoid_over_slices_and_their_gradients_match_f64() {
    let x = inputs();
    let grad: Vec<f32> = x.iter().map(|v| (v * 1.7).cos()).collect();
    let (t, s) = (tanh_values(&x), sigmoid_values(&x));
    let (dt, ds) = (tanh_backward(&t, &grad), sigmoid_backward(&s, &grad));
    for (i, &v) in x.iter().enumerate() {
        let (v, g) = (f64::from(v), f64::from(grad[i]));
        let (tv, sv) = (v.tanh(), 1.0 / (1.0 + (-v).exp()));
        assert!((f64::from(t[i]) - tv).abs() <= 1e-6, "tanh({v})");
        assert!((f64::from(s[i]) - sv).abs() <= 1e-6, "sigmoid({v})");
        assert!(
            (f64::from(dt[i]) - g * (1.0 - tv * tv)).abs() <= 1e-5,
            "tanh'({v})"
        );
        assert!(
            (f64::from(ds[i]) - g * sv * (1.0 - sv)).abs() <= 1e-5,
            "sigmoid'({v})"
        );
    }
}

#[test]
fn ln_and_sin_cos_are_close_to_f64() {
    use kd_kernels::activation::{ln, sin_cos_pi};
    for i in 1..=(1 << 16) {
        // (0, 1], the range noise needs, and values above one.
        for x in [
            i as f32 / 65536.0,
            i as f32 * 3.7,
            (i as f32).powi(2) * 1e-12,
        ] {
            let want = f64::from(x).ln();
            assert!(
                (f64::from(ln(x)) - want).abs() <= 3e-7 * want.abs().max(1.0),
                "ln({x})"
            );
        }
        let s = i as f32 / 32768.0 - 1.0;
        let (sin, cos) = sin_cos_pi(s);
        let angle = std::f64::consts::PI * f64::from(s);
        assert!((f64::from(sin) - angle.sin()).abs() <= 1e-6, "sin(pi {s})");
        assert!((f64::from(cos) - angle.cos()).abs() <= 1e-6, "cos(pi {s})");
    }
}
